//! Where a forwarded error's position points when hindsight changed the text of the statement
//! that raised it: positions in the query string hindsight sent, moved back to the client's own
//! text. All positions are 1-based character counts, as in an ErrorResponse's `P` field.

/// Text hindsight inserted inside the client's statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// Where it starts in the query string sent.
    pub at: i64,
    /// How many characters it has.
    pub len: i64,
}

/// A piece of the client's text inside a statement hindsight built around it (a pre-read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Where it starts in the query string sent.
    pub at: i64,
    /// How many characters it has.
    pub len: i64,
    /// Where it starts in the client's text.
    pub client_at: i64,
}

/// A constant of the client's that hindsight sent as a parameter reference (`$n`) of a
/// statement it prepared (`capture::bound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replaced {
    /// Where the `$n` starts in the text sent.
    pub at: i64,
    /// How many characters the `$n` has.
    pub len: i64,
    /// How many characters the constant had.
    pub was: i64,
}

/// The characters of the query string sent that one statement occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentRange {
    pub start: i64,
    /// The first character past it.
    pub end: i64,
}

impl SentRange {
    pub fn contains(self, p: i64) -> bool {
        p >= self.start && p < self.end
    }
}

/// How one statement's error positions map back to the client's text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    /// Characters hindsight's query string has in front of the client's text at this
    /// statement: subtracted from the position of a forwarded error.
    pub shift: i64,
    /// Text inserted inside the client's statement, in order: a position past one is moved
    /// back by its length.
    pub inserts: Vec<Inserted>,
    /// For a statement hindsight built around pieces of the client's text: a position inside
    /// a piece is moved there; one outside every piece is left out.
    pub pieces: Vec<Piece>,
    /// Where the statement lies in the query string sent (to find the statement a rejected
    /// whole string's error points into).
    pub sent: Option<SentRange>,
    /// Constants sent as parameter references, in order: undone first, so that the rest maps
    /// a position in the text as it would have been sent with the constants in it.
    pub params: Vec<Replaced>,
}

impl Positions {
    /// Whether every position stays where it is.
    pub fn is_identity(&self) -> bool {
        self.shift == 0
            && self.inserts.is_empty()
            && self.pieces.is_empty()
            && self.params.is_empty()
    }

    /// A position in the text sent with parameter references, as one in the text with the
    /// constants in their place (inside a `$n`: where its constant starts).
    fn with_constants(&self, p: i64) -> i64 {
        let mut grown = 0;
        for &Replaced { at, len, was } in &self.params {
            if p >= at + len {
                grown += len - was;
            } else if p >= at {
                return at - grown;
            } else {
                break;
            }
        }
        p - grown
    }

    /// A position in the query string sent, as a position in the client's text: back over
    /// the text inserted before it; inside inserted text, where it was inserted;
    /// `NO_POSITION` outside every piece of a statement built around pieces.
    pub fn map(&self, p: i64) -> i64 {
        let p = self.with_constants(p);
        if !self.pieces.is_empty() {
            return self
                .pieces
                .iter()
                .find(|piece| p >= piece.at && p < piece.at + piece.len)
                .map_or(crate::wire::error_response::NO_POSITION, |piece| {
                    piece.client_at + (p - piece.at)
                });
        }
        let mut back = self.shift;
        for &Inserted { at, len } in &self.inserts {
            if p >= at + len {
                back += len;
            } else if p >= at {
                return at - back;
            }
        }
        p - back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_move_back_over_inserted_text() {
        // Sent: 10 characters of hindsight's, then the client's text with 3 characters
        // inserted at sent position 21 and 5 at sent position 31.
        let p = Positions {
            shift: 10,
            inserts: vec![Inserted { at: 21, len: 3 }, Inserted { at: 31, len: 5 }],
            ..Positions::default()
        };
        assert_eq!(p.map(15), 5);
        assert_eq!(p.map(20), 10);
        // Inside an insert: where it was inserted.
        assert_eq!(p.map(22), 11);
        assert_eq!(p.map(24), 11);
        assert_eq!(p.map(30), 17);
        assert_eq!(p.map(33), 18);
        assert_eq!(p.map(36), 18);
        assert_eq!(p.map(40), 22);
    }

    #[test]
    fn positions_move_over_constants_sent_as_parameters() {
        // Sent: `PREPARE p (int4) AS ` (20 characters), then `UPDATE t SET a = $1 WHERE b = $2`
        // for the client's `UPDATE t SET a = 12345 WHERE b = 7` at character 3 of its string.
        let p = Positions {
            shift: 20 - 2,
            params: vec![
                Replaced {
                    at: 38,
                    len: 2,
                    was: 5,
                },
                Replaced {
                    at: 51,
                    len: 2,
                    was: 1,
                },
            ],
            ..Positions::default()
        };
        assert_eq!(p.map(21), 3); // U
        assert_eq!(p.map(38), 20); // $1 → 12345
        assert_eq!(p.map(39), 20);
        assert_eq!(p.map(41), 26); // WHERE
        assert_eq!(p.map(52), 36); // $2 → 7
        assert_eq!(p.map(53), 37); // past the end: moved by both
        assert!(!p.is_identity());
    }

    #[test]
    fn a_position_outside_every_piece_is_left_out() {
        let p = Positions {
            pieces: vec![Piece {
                at: 40,
                len: 10,
                client_at: 7,
            }],
            ..Positions::default()
        };
        assert_eq!(p.map(42), 9);
        assert_eq!(p.map(39), crate::wire::error_response::NO_POSITION);
        assert_eq!(p.map(50), crate::wire::error_response::NO_POSITION);
        assert!(!p.is_identity());
        assert!(Positions::default().is_identity());
    }
}

#!/usr/bin/env bash
# The fuzzers' smoke pass for scripts/test.sh: every target for 20 s on its corpus
# (scripts/fuzz.sh N by hand). Prints one ok/FAILED line per target.
#   scripts/suites/fuzz.sh HINDSIGHT_BIN   (the binary is not used: the targets link the library)
exec bash "$(dirname "$0")/../fuzz.sh" 20

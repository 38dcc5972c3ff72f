#!/usr/bin/env python3
"""List the longest Rust functions and the structs with the most fields.

  scripts/long-fns.py [DIR ...] [--top N]      (default: src, top 15)

A function runs from its `fn` line to the line of its matching closing brace (string and
char literals and comments are skipped when counting braces). Used for the capture-reshaping
issue's before/after tables."""
import re, sys, pathlib

def strip(line, state):
    """Drop comments and literals from one line; state carries a block comment across lines."""
    out, i = [], 0
    while i < len(line):
        if state["block"]:
            j = line.find("*/", i)
            if j < 0:
                return "".join(out)
            state["block"], i = False, j + 2
            continue
        c = line[i]
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"], i = True, i + 2
            continue
        if c == '"' or (c == 'r' and re.match(r'r#*"', line[i:])):
            m = re.match(r'(r(#*))"', line[i:])
            if m:
                end = '"' + m.group(2)
                j = line.find(end, i + len(m.group(0)))
                i = len(line) if j < 0 else j + len(end)
                continue
            j = i + 1
            while j < len(line) and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            i = j + 1
            continue
        if c == "'":
            m = re.match(r"'(\\.|[^\\'])'", line[i:]) or re.match(r"'\\u\{[0-9a-fA-F]+\}'", line[i:])
            if m:
                i += len(m.group(0))
                continue
        out.append(c)
        i += 1
    return "".join(out)

def scan(path):
    fns, structs = [], []
    lines = path.read_text().splitlines()
    state = {"block": False}
    clean = [strip(l, state) for l in lines]
    fn_re = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")
    for n, l in enumerate(clean):
        m = fn_re.search(l)
        if m:
            depth, opened = 0, False
            for k in range(n, len(clean)):
                for ch in clean[k]:
                    if ch == "{":
                        depth, opened = depth + 1, True
                    elif ch == "}":
                        depth -= 1
                if not opened and ";" in clean[k]:
                    break
                if opened and depth == 0:
                    fns.append((k - n + 1, f"{path}:{n+1}", m.group(1)))
                    break
        s = re.search(r"\bstruct\s+([A-Za-z_][A-Za-z0-9_]*)[^;{(]*\{\s*$", l)
        if s:
            fields = bools = 0
            for k in range(n + 1, len(clean)):
                if clean[k].strip().startswith("}"):
                    break
                if re.match(r"\s*(pub(\([^)]*\))?\s+)?[a-z_][a-z0-9_]*\s*:", clean[k]):
                    fields += 1
                    bools += bool(re.search(r":\s*bool\s*,", clean[k]))
            structs.append((fields, bools, f"{path}:{n+1}", s.group(1)))
    return fns, structs

def main():
    args, top = [], 15
    it = iter(sys.argv[1:])
    for a in it:
        if a == "--top":
            top = int(next(it))
        else:
            args.append(a)
    fns, structs = [], []
    for d in args or ["src"]:
        for p in sorted(pathlib.Path(d).rglob("*.rs")):
            f, s = scan(p)
            fns += f
            structs += s
    print("| function | lines |\n|---|---:|")
    for n, where, name in sorted(fns, reverse=True)[:top]:
        print(f"| `{where}` `{name}` | {n} |")
    print(f"\nfunctions over 100 lines: {sum(1 for f in fns if f[0] > 100)} of {len(fns)}\n")
    print("| struct | fields | bool fields |\n|---|---:|---:|")
    for fields, bools, where, name in sorted(structs, reverse=True)[:top]:
        print(f"| `{where}` `{name}` | {fields} | {bools} |")

main()

#!/usr/bin/env bash
# Runs the command blocks of the documentation as written, so the docs cannot drift from the program.
# A block is a fenced code block between `<!-- docs-check: NAME -->` and `<!-- /docs-check -->` in
# README.md or docs/*.md; `<!-- docs-check-expect: REGEX -->` lines inside that span name what its
# output must contain. Each block runs with `bash -euo pipefail` in a scratch folder that links the
# checkout's configs/, tools/ and .venv/ and the build folder as build/ (FRESHREC_BUILD_DIR, default
# build/), so nothing is written into the checkout; a free port replaces 8080.
#   tools/docs-check.sh [BLOCK ...]   run the named blocks (default: all); exit 1 if any fails
#   DOCS_CHECK_VERBOSE=1 tools/docs-check.sh   also print each block's output
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=$(cd "${FRESHREC_BUILD_DIR:-$root/build}" 2>/dev/null && pwd) || build_dir=""
[[ -x "$build_dir/freshrec" ]] || { echo "docs-check: no freshrec in ${FRESHREC_BUILD_DIR:-build/}: build first" >&2; exit 2; }

# Every block as NAME<TAB>FILE, then its commands and expectations written to files.
scratch=$(mktemp -d /tmp/freshrec-docs-check.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
python3 - "$root" "$scratch" <<'PY'
import pathlib, re, sys
root, scratch = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
span = re.compile(r"<!-- docs-check: (\S+) -->\n(.*?)<!-- /docs-check -->", re.S)
with open(scratch / "blocks.tsv", "w") as index:
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for match in span.finditer(doc.read_text()):
            name, body = match.group(1), match.group(2)
            code = re.search(r"```(?:sh|bash)\n(.*?)```", body, re.S)
            if not code:
                sys.exit(f"{doc.name}: docs-check block '{name}' has no sh code block")
            (scratch / f"{name}.sh").write_text(code.group(1))
            expects = re.findall(r"<!-- docs-check-expect: (.*?) -->", body)
            (scratch / f"{name}.expect").write_text("".join(e + "\n" for e in expects))
            index.write(f"{name}\t{doc.relative_to(root)}\n")
PY

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
failed=0
while IFS=$'\t' read -r name doc; do
  if (($#)) && [[ " $* " != *" $name "* ]]; then continue; fi
  work="$scratch/$name.work"
  mkdir -p "$work"
  ln -s "$build_dir" "$work/build"
  for link in configs tools .venv; do [[ -e "$root/$link" ]] && ln -s "$root/$link" "$work/$link"; done
  port=$(free_port)
  sed "s/\b8080\b/$port/g" "$scratch/$name.sh" >"$work/block.sh"
  echo "== docs-check: $name ($doc)"
  if (cd "$work" && timeout 900 bash -euo pipefail block.sh) >"$scratch/$name.out" 2>&1; then
    status=ok
    while IFS= read -r pattern; do
      [[ -z "$pattern" ]] && continue
      grep -Eq -- "$pattern" "$scratch/$name.out" || { status="output lacks /$pattern/"; }
    done <"$scratch/$name.expect"
  else
    status="exit $?"
  fi
  [[ -n "${DOCS_CHECK_VERBOSE:-}" ]] && cat "$scratch/$name.out"
  if [[ "$status" == ok ]]; then
    echo "   ok"
  else
    failed=1
    tail -n 40 "$scratch/$name.out"
    echo "   FAILED: $status"
  fi
done <"$scratch/blocks.tsv"
exit $failed

#!/bin/bash
# nbdstack(8): the page meson built renders with man and groff without a
# warning, and documents every option `nbdstack --help` prints, long and
# short, as the heading of an entry, so a new option fails this test until
# it is in the page.
#
# MANPAGE is the built page (meson passes it); without it (scdoc was not
# found when meson was configured) the page is rendered from
# docs/nbdstack.8.scd here, if scdoc is installed.
. "$(dirname "$0")/lib.sh"
need_tool man groff col
need_server
scratch_init

page=${MANPAGE:-}
if [ -z "$page" ] || [ ! -f "$page" ]; then
    need_tool scdoc
    page=$SCRATCH/nbdstack.8
    scdoc <"$SRCDIR/../../docs/nbdstack.8.scd" >"$page" ||
        fail "scdoc rejects docs/nbdstack.8.scd"
fi
[ -s "$page" ] || fail "empty man page: $page"

# --- it renders, without a warning ------------------------------------------
MANWIDTH=80 LC_ALL=C.UTF-8 man --warnings=w -l "$page" >"$SCRATCH/page.80" \
    2>"$SCRATCH/man.err" || { cat "$SCRATCH/man.err" >&2; fail "man -l $page failed"; }
[ -s "$SCRATCH/man.err" ] && { cat "$SCRATCH/man.err" >&2; fail "man -l printed warnings"; }
ok "man -l renders the page without warnings"
groff -man -Tutf8 -ww -z "$page" 2>"$SCRATCH/groff.err"
[ -s "$SCRATCH/groff.err" ] && { cat "$SCRATCH/groff.err" >&2; fail "groff -ww printed warnings"; }
ok "groff -man -ww: no warnings"
for section in NAME SYNOPSIS DESCRIPTION OPTIONS "IMAGE NAMES" "CACHE MODES" \
               SIGNALS "EXIT STATUS" EXAMPLES "SEE ALSO"; do
    grep -qx "$section" "$SCRATCH/page.80" || check_fail "no $section section"
done
ok "the page has its sections"

# --- every option of --help is an entry heading ---------------------------
# Rendered wide, so no entry heading is wrapped or hyphenated; groff's
# hyphen and minus signs become ASCII.
MANWIDTH=400 LC_ALL=C.UTF-8 man -l "$page" 2>/dev/null | col -b |
    sed 's/\xe2\x80\x90/-/g; s/\xe2\x88\x92/-/g' >"$SCRATCH/page.wide"
"$NBDSTACK" --help >"$SCRATCH/help" || fail "$NBDSTACK --help failed"
# Long options anywhere in --help (the prose mentions options too), short
# options where an entry of --help starts with one ("  -p, --port=PORT").
long=$(grep -oE -- '(^|[^A-Za-z0-9-])--[a-z][a-z0-9-]*' "$SCRATCH/help" |
       sed 's/^[^-]*//' | sort -u)
short=$(grep -oE -- '^ +-[A-Za-z],' "$SCRATCH/help" | tr -d ' ,' | sort -u)
[ "$(echo "$long" | wc -w)" -ge 30 ] || fail "found only $(echo "$long" | wc -w) long options in --help"
[ "$(echo "$short" | wc -w)" -ge 15 ] || fail "found only $(echo "$short" | wc -w) short options in --help"
n=0
for opt in $long $short; do
    # An entry heading: indented, a comma-separated list of options, one
    # of which is OPT, followed by =, a space, a comma or the line's end.
    if grep -qE -- "^ +(-[^ ]*, )*${opt}([=, ]|\$)" "$SCRATCH/page.wide"; then
        n=$((n + 1))
    else
        check_fail "option $opt of --help has no entry in nbdstack(8)"
    fi
done
ok "$n options of --help have an entry in the page"
finish

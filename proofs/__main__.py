"""python -m proofs: run every proof and the meta-check; print kind, verdict, seconds.

Exit status 0 when every proof passes and the table and the proofs agree, 1 otherwise.
"""

from __future__ import annotations

import sys
import time

from n2n_fx.spec import load_table
from n2n_fx.texttable import format_table

from . import run_all
from .reach import Reach
from .reach import rows as reach_rows


def main(argv: list[str] | None = None) -> int:
    verbose = "-v" in (argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    reach = Reach()
    results, problems = run_all(reach=reach)
    rows = [("proof", "table entries", "claims", "verdict", "seconds")]
    for r in results:
        rows.append((r.name, ", ".join(r.kinds), str(len(r.claims)), r.verdict, f"{r.seconds:.2f}"))
    print(format_table(rows))
    for r in results:
        for c in r.claims:
            if verbose or not c.ok or not c.expect:
                mark = "ok " if c.ok else "BAD"
                print(f"\n[{mark}] {r.name}: {c.statement}")
                if c.counterexample:
                    print(f"      counterexample: {c.counterexample}")
    table = reach_rows(load_table(), reach)
    print(f"\nreach: the spelling families of every table entry and the proofs whose models reach them "
          f"({sum(r[4] == 'reached' for r in table)} reached, {sum(r[4].startswith('exempt') for r in table)} "
          f"exempt, {sum(r[4] == 'stop' for r in table)} stop)\n")
    print(format_table([("entry", "family", "reached by", "symbolic", "verdict"), *table]))
    for p in problems:
        print(f"\nmeta-check: {p}")
    ok = not problems and all(r.ok for r in results)
    print(f"\n{len(results)} proofs, {sum(len(r.claims) for r in results)} claims, "
          f"{'all verified' if ok else 'FAILURES'} in {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

r"""Writes tests/data/grading_cases.jsonl: olympiad-style answer formats.

Run by hand, once, from the repository root
(`python tests/data/make_grading_cases.py`; it reads the packaged benchmark
files, `--data` another copy); the JSONL it writes is the committed test data,
reviewed case by case. Tests never run this script.

Each case is a gold taken from a benchmark (its row noted in `source`)
rewritten the way models write answers: positives (the same answer in another
notation) and near-miss negatives (one value changed, order of an ordered
answer swapped, a bracket flipped, a hedge over several boxes, an answer
missing). Fields: category, response (a whole model response), gold, mode
("boxed" is the training reward, "eval" the benchmark grading), expected,
source.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.checker import split_top  # noqa: E402
from rlvr_jax.data import paper_data  # noqa: E402

OUT = Path(__file__).with_name("grading_cases.jsonl")


def _rows(data: Path, bench: str) -> list[dict]:
    return [json.loads(x) for x in (data / "eval" / bench / "test.jsonl").open()]


class Golds:
    """Looks golds up by benchmark row, so that every case names its source."""

    def __init__(self, data: Path):
        self.olympiad = {r["id"]: r for r in _rows(data, "olympiadbench")}
        self.math500 = {r["unique_id"]: r for r in _rows(data, "math500")}
        self.minerva = {r["idx"]: r for r in _rows(data, "minerva_math")}
        self.aime = {
            f"{b}#{i}": r
            for b in ("aime24", "aime25")
            for i, r in enumerate(_rows(data, b))
        }

    def ob(self, row_id: int) -> tuple[str, str]:
        gold = self.olympiad[row_id]["final_answer"][0].strip().strip("$").strip()
        return gold, f"olympiadbench#{row_id}"

    def m5(self, uid: str) -> tuple[str, str]:
        return self.math500[uid]["answer"], f"math500#{uid}"

    def mi(self, idx: int, gold: str) -> tuple[str, str]:
        # Minerva's gold is the last box of its solution; checked here.
        assert gold in self.minerva[idx]["solution"], (idx, gold)
        return gold, f"minerva_math#{idx}"

    def am(self, key: str) -> tuple[str, str]:
        return str(self.aime[key]["answer"]), key


def boxed(answer: str) -> str:
    return f"Putting this together, the final answer is $\\boxed{{{answer}}}$."


def cases(g: Golds) -> list[dict]:
    out: list[dict] = []

    def add(category, response, gold_src, expected, mode="boxed"):
        gold, source = gold_src
        out.append(
            dict(
                category=category,
                response=response,
                gold=gold,
                mode=mode,
                expected=expected,
                source=source,
            )
        )

    def add_both(category, gold_src, positives, negatives):
        for pred in positives:
            add(category, boxed(pred), gold_src, True)
        for pred in negatives:
            add(category, boxed(pred), gold_src, False)

    # ---------------------------------------------------------- relations
    cat = "relations"
    for gold_src, pos, neg in [
        (
            g.ob(1964),  # k \geqslant 2
            [r"k \geq 2", "k >= 2", "k \u2265 2", r"k \ge 2", r"2 \leq k", r"2 \le k"],
            [r"k > 2", r"k \geq 3", r"k \leq 2", r"k \gt 2"],
        ),
        (
            g.m5("test/intermediate_algebra/183.json"),  # (2,\infty)
            [r"x > 2", r"x \gt 2", r"2 < x", r"2 \lt x"],
            [r"x \geq 2", r"x < 2", r"x > 3"],
        ),
        (
            g.m5("test/precalculus/695.json"),  # (-\infty, 0]
            [r"x \leq 0", "x <= 0", r"0 \geq x", "x \u2264 0"],
            [r"x < 0", r"x \geq 0"],
        ),
        (
            g.m5("test/intermediate_algebra/1714.json"),  # (5,\infty)
            [r"x \gt 5", r"5 \lt x"],
            [r"x \geqslant 5", r"x \gt 6"],
        ),
    ]:
        add_both(cat, gold_src, pos, neg)
    # Chains: the last member is the answer, when every member is equal.
    for row_id, a, b in [(1828, 6000, 48), (2021, 1300, 44), (2256, 999, 1)]:
        gold_src = g.ob(row_id)
        n = int(gold_src[0])
        add(cat, boxed(f"N = {a} + {b} = {n}"), gold_src, True)
        add(cat, boxed(rf"{a} + {b} = {n}"), gold_src, True)
        add(cat, boxed(f"N = {a} + {b} + 1 = {n + 1}"), gold_src, False)
        add(cat, boxed(f"N = {a} + {b} = {n + 2}"), gold_src, False)
    # \approx: the exact member counts; a wrong exact value is wrong.
    for gold_src, pos, neg in [
        (
            g.ob(2640),  # \frac{2}{7} \sqrt{53}
            [
                r"\frac{2\sqrt{53}}{7} \approx 2.080",
                r"\frac{2}{7}\sqrt{53} \approx 2.08",
            ],
            [
                r"\frac{2\sqrt{51}}{7} \approx 2.040",
                r"\frac{3\sqrt{53}}{7} \approx 3.12",
            ],
        ),
        (
            g.ob(2706),  # \frac{9 \sqrt{3}}{20}
            [r"\frac{9\sqrt{3}}{20} \approx 0.779"],
            [r"\frac{9\sqrt{2}}{20} \approx 0.636"],
        ),
        (
            g.ob(2745),  # 6 \sqrt{2}-2
            [r"d = 6\sqrt{2} - 2 \approx 6.485", r"6\sqrt2-2\approx 6.49"],
            [r"6\sqrt{2} + 2 \approx 10.49"],
        ),
        (
            g.ob(1747),  # M=\frac{9}{32} \sqrt{2}
            [r"M = \frac{9\sqrt{2}}{32} \approx 0.398"],
            [r"M = \frac{9\sqrt{3}}{32} \approx 0.487"],
        ),
    ]:
        add_both(cat, gold_src, pos, neg)
    # \neq / != against a domain written as a union.
    gold_src = g.m5("test/algebra/2043.json")  # (-\infty, 2) \cup (3, \infty)
    add(cat, boxed(r"x < 2 \text{ or } x > 3"), gold_src, True)
    add(cat, boxed(r"x<2 \text{ or } x>3"), gold_src, True)
    add(cat, boxed(r"x \le 2 \text{ or } x > 3"), gold_src, False)
    add(cat, boxed(r"2 < x < 3"), gold_src, False)

    # ----------------------------------------------------------- labelled
    cat = "labelled"
    for gold_src in [g.ob(1678), g.ob(1833), g.ob(2265), g.ob(2283)]:
        a, b = gold_src[0].strip("()").split(",")
        add_both(
            cat,
            gold_src,
            [f"(a,b) = ({a},{b})", f"(x, y) = ({a}, {b})", f"m = {a}, n = {b}"]
            + [rf"x = {a},\ y = {b}"],
            [f"(a,b) = ({b},{a})", f"m = {b}, n = {a}", f"(a,b) = ({a},{int(b) + 1})"],
        )
    for gold_src in [
        g.ob(2165),
        g.ob(2647),
        g.m5("test/intermediate_algebra/956.json"),
    ]:
        a, b, c = gold_src[0].strip("()").split(",")
        add(cat, boxed(f"(a, b, c) = ({a}, {b}, {c})"), gold_src, True)
        add(cat, boxed(f"a = {a}, b = {b}, c = {c}"), gold_src, True)
        add(cat, boxed(f"a = {b}, b = {a}, c = {c}"), gold_src, False)
    # Lists of values written with indexed labels.
    for row_id in (2216, 2391, 2421):
        gold_src = g.ob(row_id)
        parts = [x.strip() for x in gold_src[0].split(",")]
        labelled = ", ".join(f"x_{i + 1} = {x}" for i, x in enumerate(parts))
        add(cat, boxed(labelled), gold_src, True)
        add(
            cat, boxed(" \\text{ or } ".join(f"x = {x}" for x in parts)), gold_src, True
        )
        wrong = ", ".join(f"x_{i + 1} = {x}" for i, x in enumerate(parts[:-1]))
        add(cat, boxed(wrong), gold_src, False)
    # Labels that are not single variables: lengths, angles, ratios.
    for gold_src, label in [
        (g.ob(2609), r"|PQ|"),  # 20 \sqrt{7}
        (g.ob(2768), r"AB"),  # \sqrt{130}
        (g.ob(2584), r"XY"),  # \sqrt{6}
        (g.ob(2740), r"|AB|"),  # 5 \sqrt{10}
    ]:
        add(cat, boxed(f"{label} = {gold_src[0]}"), gold_src, True)
        add(cat, boxed(f"{label} = 2{gold_src[0]}"), gold_src, False)
    for gold_src in [g.ob(2592), g.ob(2359)]:  # 4.2, 4.25
        add(cat, boxed(rf"\angle ABC = {gold_src[0]}^\circ"), gold_src, True)
    gold_src = g.ob(2435)  # 18.8^{\circ}
    add(cat, boxed(r"\angle PQR = 18.8^\circ"), gold_src, True)
    add(cat, boxed(r"\angle PQR = 18.9^\circ"), gold_src, False)
    for uid, num, den in [
        ("test/counting_and_probability/803.json", 1, 4),
        ("test/counting_and_probability/282.json", 1, 2),
    ]:
        gold_src = g.m5(uid)
        add(cat, boxed(f"AB:CD = {num}:{den}"), gold_src, True)
        add(cat, boxed(f"AB : CD = {den}:{num}"), gold_src, False)
    for row_id, label in [(1747, "M"), (2615, "d")]:
        gold_src = g.ob(row_id)
        value = gold_src[0].split("=", 1)[1]
        add(cat, boxed(value), gold_src, True)
        add(cat, boxed(f"{label} = {value} + 1"), gold_src, False)

    # ------------------------------------------------------------ multibox
    cat = "multibox"
    for row_id in (2950, 2313, 2544, 1929, 2460):
        gold_src = g.ob(row_id)
        parts = split_top(gold_src[0].replace("$", ""))
        add(
            cat,
            "The solutions are " + ", ".join(f"$\\boxed{{{p}}}$" for p in parts) + ".",
            gold_src,
            True,
        )
        add(
            cat,
            " and ".join(f"\\boxed{{{p}}}" for p in reversed(parts)),
            gold_src,
            True,
        )
        add(
            cat,
            "The pairs are " + ", ".join(f"$\\boxed{{{p}}}$" for p in parts[:-1]) + ".",
            gold_src,
            False,
        )
    for row_id in (2216, 2391, 2421, 2317):
        gold_src = g.ob(row_id)
        parts = split_top(gold_src[0])
        add(cat, " and ".join(f"\\boxed{{{p}}}" for p in parts), gold_src, True)
        add(cat, r" \quad ".join(f"\\boxed{{{p}}}" for p in parts), gold_src, True)
        add(
            cat,
            " and ".join(f"\\boxed{{{p}}}" for p in parts + ["100"]),
            gold_src,
            False,
        )
    # Hedges for a single-valued answer stay wrong; an earlier, separate box
    # (a step of the working) does not join the final one.
    for row_id in (1828, 2021, 2256, 2345, 2422, 2520):
        gold_src = g.ob(row_id)
        n = int(gold_src[0])
        add(cat, rf"\boxed{{{n - 1}}} or \boxed{{{n}}}", gold_src, False)
        add(cat, rf"$\boxed{{{n}}}$ or $\boxed{{{n + 1}}}$", gold_src, False)
        add(
            cat,
            rf"First, $a = \boxed{{{n - 1}}}$ by the lemma."
            "\n\n"
            rf"Hence the answer is $\boxed{{{n}}}$.",
            gold_src,
            True,
        )
    for key in ("aime24#3", "aime25#7"):
        gold_src = g.am(key)
        n = int(gold_src[0])
        add(cat, rf"\boxed{{{n}}} \text{{ or }} \boxed{{{n + 2}}}", gold_src, False)
        add(cat, rf"\boxed{{{n}}}, \boxed{{{n}}}", gold_src, True)

    # ----------------------------------------------------------------- sets
    cat = "sets"
    gold_src = g.m5("test/intermediate_algebra/2015.json")  # \{1\pm\sqrt{5},-2\}
    add(cat, boxed(r"-2, 1+\sqrt{5}, 1-\sqrt{5}"), gold_src, True)
    add(cat, boxed(r"x = -2 \text{ or } x = 1 \pm \sqrt{5}"), gold_src, True)
    add(cat, boxed(r"\{-2, 1-\sqrt5, 1+\sqrt5\}"), gold_src, True)
    add(cat, boxed(r"-2, 1+\sqrt{5}"), gold_src, False)
    add(cat, boxed(r"2, 1\pm\sqrt{5}"), gold_src, False)
    for row_id in (2216, 2391, 2421, 2317, 2549, 2375, 2771):
        gold_src = g.ob(row_id)
        parts = split_top(gold_src[0].replace("$", ""))
        add(cat, boxed(r"\{" + ", ".join(reversed(parts)) + r"\}"), gold_src, True)
        add(cat, boxed(", ".join(reversed(parts))), gold_src, True)
        add(cat, boxed(r"x \in \{" + ", ".join(parts) + r"\}"), gold_src, True)
        add(cat, boxed(r"\{" + ", ".join(parts[1:]) + r"\}"), gold_src, False)
    for row_id in (1929, 2313, 2544, 2570):
        gold_src = g.ob(row_id)
        parts = split_top(gold_src[0])
        add(cat, boxed(r"\{" + ", ".join(reversed(parts)) + r"\}"), gold_src, True)
        swapped = [_swap_pair(p) for p in parts]
        add(cat, boxed(", ".join(swapped)), gold_src, False)
    for row_id in (1678, 1833, 2265):  # ordered pairs stay ordered
        gold_src = g.ob(row_id)
        add(cat, boxed(_swap_pair(gold_src[0])), gold_src, False)
        add(cat, boxed(r"\left(" + gold_src[0][1:-1] + r"\right)"), gold_src, True)

    # ---------------------------------------------------- thousands, percent
    cat = "thousands_percent"
    for row_id in (1697, 2006, 2095, 2126, 2663, 2603):
        gold_src = g.ob(row_id)
        n = int(gold_src[0])
        add(cat, boxed(_group(n, r",\!")), gold_src, True)
        add(cat, boxed(_group(n, "{,}")), gold_src, True)
        add(cat, boxed(_group(n, r"\,")), gold_src, True)
        add(cat, boxed(_group(n + 10, r",\!")), gold_src, False)
    for uid in (
        "test/counting_and_probability/508.json",  # 10,\!080
        "test/number_theory/417.json",  # 11,\! 111,\! 111,\! 100
        "test/algebra/2626.json",  # \$32,\!348
    ):
        gold_src = g.m5(uid)
        n = int("".join(c for c in gold_src[0] if c.isdigit()))
        add(cat, boxed(str(n)), gold_src, True)
        add(cat, boxed(_group(n, ",")), gold_src, True)
        add(cat, boxed(_group(n + 1, r",\!")), gold_src, False)
    for row_id in (2255, 2341):  # 62.5%, 17.5%
        gold_src = g.ob(row_id)
        v = gold_src[0].rstrip("%")
        add_both(
            cat,
            gold_src,
            [rf"{v}\%", rf"{v} \text{{ percent}}", rf"{v}\text{{pct}}", f"{v} percent"],
            [rf"{float(v) + 1}\%", rf"{float(v) / 10} \text{{ percent}}"],
        )
    gold_src = g.ob(2276)  # 8 \%
    add(cat, boxed(r"8 \text{ percent}"), gold_src, True)
    add(cat, boxed(r"8\%"), gold_src, True)
    add(cat, boxed(r"9\%"), gold_src, False)

    # --------------------------------------------------- intervals vs relations
    cat = "intervals"
    for gold_src, pos, neg in [
        (
            g.m5("test/algebra/101.json"),  # x \in [-2,7]
            [
                r"-2 \le x \le 7",
                r"[-2, 7]",
                r"-2 \leq x \leq 7",
                r"x \in \left[-2, 7\right]",
            ],
            [r"-2 < x \le 7", r"(-2, 7]", r"-2 \le x \le 8"],
        ),
        (
            g.m5("test/algebra/1078.json"),  # (-\sqrt{3}, \sqrt{3})
            [
                r"-\sqrt{3} < x < \sqrt{3}",
                r"|x| < \sqrt{3}",
                r"x \in (-\sqrt3, \sqrt3)",
            ],
            [r"|x| \le \sqrt{3}", r"-\sqrt{3} \le x < \sqrt{3}", r"|x| < 3"],
        ),
        (
            g.m5("test/algebra/2043.json"),  # (-\infty, 2) \cup (3, \infty)
            [r"x \in (-\infty, 2) \cup (3, \infty)", r"(3, \infty) \cup (-\infty, 2)"],
            [r"(-\infty, 2] \cup (3, \infty)", r"(-\infty, 3) \cup (2, \infty)"],
        ),
        (
            g.ob(2243),  # (-\infty,-5)
            [r"x < -5", r"x \in (-\infty, -5)", r"-5 > x"],
            [r"x \le -5", r"x > -5"],
        ),
        (
            g.ob(2410),  # [\frac{1}{2}, 8]
            [
                r"\frac{1}{2} \le x \le 8",
                r"x \in \left[\tfrac12, 8\right]",
                r"[0.5, 8]",
            ],
            [r"\frac{1}{2} < x \le 8", r"[\frac{1}{2}, 8)"],
        ),
        (
            g.ob(2502),  # [-1,-\frac{1}{2}]
            [r"-1 \leq x \leq -\frac{1}{2}", r"\left[-1, -\frac12\right]"],
            [r"-1 \leq x \leq \frac{1}{2}", r"\left(-1, -\frac12\right]"],
        ),
        (
            g.ob(2298),  # (-\sqrt{11},-2)\cup (\sqrt{11},9)
            [
                r"x \in (-\sqrt{11}, -2) \cup (\sqrt{11}, 9)",
                r"(\sqrt{11}, 9) \cup (-\sqrt{11}, -2)",
            ],
            [r"(-\sqrt{11}, -2] \cup (\sqrt{11}, 9)"],
        ),
        (
            g.m5("test/algebra/2486.json"),  # \left(\frac{3}{5},\frac{8}{3}\right]
            [r"\frac{3}{5} < x \le \frac{8}{3}", r"x \in (0.6, 8/3]"],
            [r"\frac{3}{5} \le x \le \frac{8}{3}", r"\frac{3}{5} < x < \frac{8}{3}"],
        ),
        (
            g.ob(2045),  # t(0,4]
            [r"t \in (0, 4]", r"0 < t \le 4"],
            [r"0 \le t \le 4", r"t \in (0, 4)"],
        ),
    ]:
        add_both(cat, gold_src, pos, neg)
    # Unions against an absolute-value inequality.
    gold_src = g.m5("test/intermediate_algebra/183.json")  # (2, \infty)
    add(cat, boxed(r"|x - 5| < 3 \text{ and } x > 2"), gold_src, False)
    for gold, pos, neg in [
        (r"(-\infty, -2) \cup (2, \infty)", [r"|x| > 2"], [r"|x| \ge 2", r"|x| < 2"]),
        (
            r"(-\infty, 1] \cup [5, \infty)",
            [r"|x - 3| \ge 2"],
            [r"|x - 3| > 2", r"|x + 3| \ge 2"],
        ),
        (r"(1, 5)", [r"|x - 3| < 2"], [r"|x - 3| \le 2", r"|x - 2| < 3"]),
    ]:
        src = (gold, "constructed, in the form of olympiadbench#2298")
        add_both(cat, src, pos, neg)

    # ---------------------------------------------------- matrices and vectors
    cat = "matrices"
    for uid in (
        "test/precalculus/1300.json",  # (-1/3, 2/3, 5/3)
        "test/precalculus/263.json",  # (-2, -14, -7)
        "test/precalculus/398.json",  # (1/5, -18/5)
        "test/precalculus/625.json",  # (16/49, 48/49, 24/49)
        "test/precalculus/145.json",  # (-7, 16, 5)
    ):
        gold_src = g.m5(uid)
        entries = _pmatrix_entries(gold_src[0])
        col = r" \\ ".join(_frac(e) for e in entries)
        add(
            cat,
            boxed(rf"\left[\begin{{array}}{{c}} {col} \end{{array}}\right]"),
            gold_src,
            True,
        )
        add(cat, boxed(rf"\begin{{bmatrix}} {col} \end{{bmatrix}}"), gold_src, True)
        add(
            cat,
            f"The vector is $\\begin{{pmatrix}} {col} \\end{{pmatrix}}$, so $\\boxed{{\\begin{{pmatrix}} {col} \\end{{pmatrix}}}}$.",
            gold_src,
            True,
        )
        wrong = list(entries)
        wrong[0] = _bump(wrong[0])
        add(
            cat,
            boxed(
                r"\begin{pmatrix} "
                + r" \\ ".join(_frac(e) for e in wrong)
                + r" \end{pmatrix}"
            ),
            gold_src,
            False,
        )
        add(
            cat,
            boxed(
                r"\begin{pmatrix} "
                + " & ".join(_frac(e) for e in entries)
                + r" \end{pmatrix}"
            ),
            gold_src,
            False,
        )
    gold_src = g.m5("test/precalculus/920.json")  # -I
    add(
        cat,
        boxed(r"\left[\begin{array}{cc} -1 & 0 \\ 0 & -1 \end{array}\right]"),
        gold_src,
        True,
    )
    add(cat, boxed(r"\begin{bmatrix} -1 & 0 \\ 0 & -1 \end{bmatrix}"), gold_src, True)
    add(cat, boxed(r"\begin{pmatrix} -1 & 0 \\ 0 & 1 \end{pmatrix}"), gold_src, False)
    add(cat, boxed(r"\begin{pmatrix} 0 & -1 \\ -1 & 0 \end{pmatrix}"), gold_src, False)
    # Decimals in entries, at the precision the response gives (eval mode).
    for uid, dec, wrong in [
        (
            "test/precalculus/1300.json",
            r"-0.333 \\ 0.667 \\ 1.667",
            r"-0.333 \\ 0.667 \\ 1.6",
        ),
        ("test/precalculus/398.json", r"0.2 \\ -3.6", r"0.2 \\ -3.5"),
        (
            "test/precalculus/625.json",
            r"0.3265 \\ 0.9796 \\ 0.4898",
            r"0.3265 \\ 0.9796 \\ 0.4899",
        ),
    ]:
        gold_src = g.m5(uid)
        add(
            cat,
            boxed(rf"\begin{{pmatrix}} {dec} \end{{pmatrix}}"),
            gold_src,
            True,
            "eval",
        )
        add(
            cat,
            boxed(rf"\begin{{pmatrix}} {wrong} \end{{pmatrix}}"),
            gold_src,
            False,
            "eval",
        )
    # Vectors as tuples against a column vector.
    gold_src = g.m5("test/precalculus/145.json")
    add(cat, boxed(r"\langle -7, 16, 5 \rangle"), gold_src, True)
    add(cat, boxed(r"\langle -7, 5, 16 \rangle"), gold_src, False)

    # ------------------------------------------------------- unboxed (eval)
    cat = "unboxed"
    for row_id in (1828, 2021, 2256, 2345, 2422, 2520, 2625, 2677):
        gold_src = g.ob(row_id)
        n = int(gold_src[0])
        add(
            cat,
            f"Checking every case, we find that the smallest value is {n}.",
            gold_src,
            True,
            "eval",
        )
        add(cat, f"So the number of such sequences is ${n}$.", gold_src, True, "eval")
        add(
            cat,
            f"Therefore, the answer must be ${n + 1}$, since $k = {n}$ fails.",
            gold_src,
            False,
            "eval",
        )
    for gold_src in [g.ob(2706), g.ob(2640), g.ob(2789), g.ob(2425)]:
        add(
            cat,
            f"Hence the probability that both events occur is ${gold_src[0]}$.",
            gold_src,
            True,
            "eval",
        )
        add(
            cat,
            f"Thus the area of the triangle is \\[{gold_src[0]}.\\]",
            gold_src,
            True,
            "eval",
        )
        add(cat, f"Hence the ratio is ${gold_src[0]} + 1$.", gold_src, False, "eval")
        add(
            cat,
            f"Collecting terms, we get\n\\[{gold_src[0]}\\]",
            gold_src,
            True,
            "eval",
        )
        add(
            cat,
            f"Collecting terms:\n$$2 \\cdot {gold_src[0]}.$$",
            gold_src,
            False,
            "eval",
        )
    for uid in (
        "test/counting_and_probability/803.json",
        "test/counting_and_probability/282.json",
    ):
        gold_src = g.m5(uid)
        add(
            cat,
            f"The probability of drawing two red cards is $P = {gold_src[0]}$.",
            gold_src,
            True,
            "eval",
        )
        add(
            cat,
            f"The probability of drawing two red cards is ${gold_src[0]}$ after 3 draws.",
            gold_src,
            True,
            "eval",
        )
    minerva_cases(g, add)
    return out


def minerva_cases(g: Golds, add) -> None:
    """Minerva's physics golds: scientific notation, units, labelled formulas."""
    for idx, gold in [
        (156, "1.77e-6"),
        (174, "3.89e-10"),
        (178, "5.89e-7"),
        (186, "1.45e-5"),
        (191, "1.39e-10"),
        (198, "2.55e-10"),
    ]:
        gold_src = g.mi(idx, gold)
        m, e = gold.split("e")
        sci = rf"{m} \times 10^{{{int(e)}}}"
        wrong = rf"{m} \times 10^{{{int(e) + 1}}}"
        add("relations", boxed(rf"\lambda \approx {sci}\,\mathrm{{m}}"), gold_src, True)
        add("relations", boxed(rf"{sci}~\mathrm{{m}}"), gold_src, True)
        add(
            "relations",
            boxed(rf"\lambda \approx {wrong}\,\mathrm{{m}}"),
            gold_src,
            False,
        )
        add(
            "unboxed",
            rf"Therefore the wavelength is ${sci}\,\mathrm{{m}}$.",
            gold_src,
            True,
            "eval",
        )
        add("unboxed", rf"So it is ${wrong}$ m.", gold_src, False, "eval")
    for idx, gold, grouped, wrong in [
        (46, "15625", r"15,\!625", r"15,\!652"),
        (233, "41585", r"41{,}585", r"41{,}558"),
        (20, "6630", r"6,630 \text{ K}", r"6,300 \text{ K}"),
        (145, "400000", r"400,\!000", r"40,\!000"),
    ]:
        gold_src = g.mi(idx, gold)
        add("thousands_percent", boxed(grouped), gold_src, True)
        add("thousands_percent", boxed(wrong), gold_src, False)
    gold_src = g.mi(260, "X_{d}=125-1.25 P")
    for pred, expected in [
        ("125 - 1.25P", True),
        ("X_d = 125 - 1.25 P", True),
        ("X_{d} = -1.25P + 125", True),
        ("X_d = 125 - 1.5 P", False),
        ("125 - 1.25", False),
    ]:
        add("labelled", boxed(pred), gold_src, expected)


def _swap_pair(p: str) -> str:
    a, b = p.strip().strip("()").split(",", 1)
    return f"({b.strip()}, {a.strip()})"


def _group(n: int, sep: str) -> str:
    return f"{n:,}".replace(",", sep)


def _pmatrix_entries(gold: str) -> list[str]:
    body = gold.split(r"\begin{pmatrix}")[1].split(r"\end{pmatrix}")[0]
    return [e.strip() for e in body.split(r"\\")]


def _frac(e: str) -> str:
    if "/" in e:
        top, bottom = e.split("/")
        sign = "-" if top.startswith("-") else ""
        return rf"{sign}\frac{{{top.lstrip('-')}}}{{{bottom}}}"
    return e


def _bump(e: str) -> str:
    if "/" in e:
        top, bottom = e.split("/")
        return f"{int(top) + 1}/{bottom}"
    return str(int(e) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(paper_data.__file__).parent)
    args = parser.parse_args()
    rows = cases(Golds(args.data))
    with OUT.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"{len(rows)} cases -> {OUT}")


if __name__ == "__main__":
    main()

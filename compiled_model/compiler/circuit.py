"""Pass 2: the accumulator machine as a circuit over the residual stream.

Every position runs the same circuit and emits the token its place in the
group calls for. Layer by layer:

1. attention: the latest group head (`pc:n` in a trace, `op:X` in the
   prompt) and eight relative lookups (t-1 .. t-8) of digit place values
   and signs. MLP: `qhigh`, the digits of this word already emitted, and
   `asm`, the whole word (meaningful where a word ends, at `d0`).
2. attention: instruction fetch (the prompt word ending at position
   10 + 10 pc) and the previous accumulator (the latest `d0`). MLP: memory
   keys of STORE steps, and whether the accumulator is zero (for JZ).
3. attention: memory, the latest STORE to the operand's slot. MLP: the
   result `v` of every op at once, guarded by the op indicator; the next
   pc; DIV's operands.
4.-6. MLPs: magnitude, sign and overflow; then one long-division digit
   (`digit = #{j : R >= j*S}`, base 16) of |v| or of |a| div |b|.
7. MLP: the id of the next token; the unembedding peaks at that id.
"""

from __future__ import annotations

from ..isa import OPS
from ..vocab import DIV0, HALT, OVF, VOCAB, token_id
from .gadgets import M, eq0_terms, ge0_terms, relu
from .graph import Graph, Lin

__all__ = ["build_graph"]

BIG_POS = float(2**23)  # more than any position: "latest" heads ignore non-matches
BIG_FETCH = float(2**10)
SENTINEL = float(2**11)  # address given to positions that write no memory
RECENCY = float(2**-22)  # later writes win; below 1 up to 4M positions


def _digit(tok: str) -> tuple[int, int] | None:
    if len(tok) == 4 and tok[0] == "d" and tok[2] == ":":
        return int(tok[1]), int(tok[3], 16)
    return None


def _features(g: Graph) -> dict[str, Lin]:
    f: dict[str, Lin] = {}
    f["one"] = g.embed("one", lambda t: 1.0)
    f["is_head"] = g.embed("is_head", lambda t: float(t.startswith(("op:", "pc:"))))
    f["is_pc"] = g.embed("is_pc", lambda t: float(t.startswith("pc:")))
    f["pcval"] = g.embed(
        "pcval", lambda t: float(t[3:]) if t.startswith("pc:") else 0.0
    )
    for op in OPS:
        f[op] = g.embed(f"op={op}", lambda t, op=op: float(t == f"op:{op}"))
    f["is_d0"] = g.embed("is_d0", lambda t: float(t.startswith("d0:")))
    f["pv"] = g.embed(
        "pv", lambda t: float(d[1] * 16 ** d[0]) if (d := _digit(t)) else 0.0
    )
    f["sgn"] = g.embed("sgn", lambda t: {"+": 1.0, "-": -1.0}.get(t, 0.0))

    def mask(t: str, j: int) -> float:
        d = _digit(t)
        return float(d is not None and d[0] >= 1 and j <= 7 - d[0])

    for j in range(1, 7):
        f[f"qmask{j}"] = g.embed(f"qmask{j}", lambda t, j=j: mask(t, j))

    def place(t: str) -> float:
        d = _digit(t)
        if t in ("+", "-"):
            return float(16**7)
        return float(16 ** (d[0] - 1)) if d and d[0] >= 1 else 0.0

    def emits_digit(t: str) -> bool:
        d = _digit(t)
        return t in ("+", "-") or (d is not None and d[0] >= 1)

    def outconst(t: str) -> float:
        d = _digit(t)
        if t == "<run>" or (d and d[0] == 0):
            return float(token_id("pc:0"))
        if t in ("+", "-"):
            return float(token_id("d7:0"))
        if d:
            return float(token_id(f"d{d[0] - 1}:0"))
        return 0.0

    f["place"] = g.embed("place", place)
    f["isdig"] = g.embed("emits_digit", lambda t: float(emits_digit(t)))
    f["outconst"] = g.embed("outconst", outconst)
    return f


def build_graph() -> Graph:
    g = Graph(VOCAB)
    f = _features(g)
    one = f["one"]
    pos, pos2 = g.positions()

    # Layer 1: group head and the eight previous positions.
    head_vals = [("pc", f["pcval"]), ("is_pc", f["is_pc"])] + [
        (op, f[op]) for op in OPS
    ]
    hd = g.attend(
        "head",
        (Lin(), one),
        (Lin(), pos - BIG_POS * one + BIG_POS * f["is_head"]),
        head_vals,
    )
    h_pc, h_ispc, h_op = hd[0], hd[1], dict(zip(OPS, hd[2:]))
    rel = {}
    for j in range(1, 9):
        value = ("sgn", f["sgn"]) if j == 8 else ("pv", f["pv"])
        rel[j] = g.attend(f"rel{j}", (pos - j * one, one), (2 * pos, -pos2), [value])[0]
    qhigh = f["pv"] + g.reglu(
        "qhigh", [(1.0, rel[j], f[f"qmask{j}"]) for j in range(1, 7)]
    )
    absasm = f["pv"]
    for j in range(1, 8):
        absasm = absasm + rel[j]
    asm = g.reglu("asm", [(1.0, absasm, rel[8]), (-1.0, absasm, -rel[8])])

    # Layer 2: fetch the instruction at pc; read the previous accumulator.
    at = pos - 10 * one
    fetched = g.attend(
        "fetch",
        (10 * h_pc, one),
        (
            2 * at,
            -pos2 + 20 * pos - 100 * one - BIG_FETCH * one + BIG_FETCH * f["is_d0"],
        ),
        [(op, h_op[op]) for op in OPS] + [("arg", asm)],
    )
    o, arg = dict(zip(OPS, fetched[:-1])), fetched[-1]
    acc = g.attend(
        "acc",
        (Lin(), one),
        (Lin(), pos - BIG_POS * one + BIG_POS * f["is_d0"]),
        [("asm", asm)],
    )[0]

    # 1 at the d0 of a STORE step, <= 0 anywhere else.
    writes = o["STORE"] + h_ispc + f["is_d0"] - 2 * one
    flag = relu(g, "store_flag", one, writes)
    aeff = g.reglu("store_addr", [(1.0, arg + SENTINEL * one, writes)])
    # Off the writers this may be nonzero; it only lowers their keys further.
    asq = g.reglu("store_addr^2", [(1.0, arg, arg - float(2**12) * (one - writes))])
    is_zero = g.reglu("acc==0", eq0_terms(one, asm))

    # Layer 3: memory, then every op's result at once.
    mem = g.attend(
        "mem",
        (arg, one),
        (
            2 * aeff - 2 * SENTINEL * one,
            -(SENTINEL**2) * one + SENTINEL**2 * flag - asq + RECENCY * pos,
        ),
        [("value", asm)],
    )[0]
    a, b = acc, mem

    def off(op: str) -> Lin:
        return M * one - M * o[op]

    terms = [
        (1.0, arg, o["CONST"]),
        (1.0, b, o["LOAD"]),
        (1.0, a, o["STORE"] + o["JMP"] + o["JZ"] + o["HALT"]),
        (1.0, a + b, o["ADD"]),
        (1.0, a - b, o["SUB"]),
        (1.0, -a, o["NEG"]),
        (1.0, one - a, o["NOT"]),
        (1.0, a, b - off("MUL")),
        (-1.0, a, -b - off("MUL")),
        (1.0, one, o["NE"]),
    ]
    terms += ge0_terms(one, b - a - one, off("LT")) + ge0_terms(one, b - a, off("LE"))
    terms += ge0_terms(one, a - b - one, off("GT")) + ge0_terms(one, a - b, off("GE"))
    terms += eq0_terms(one, a - b, off("EQ"))
    terms += [(-c, gt, up) for c, gt, up in eq0_terms(one, a - b, off("NE"))]
    v = g.reglu("v", terms)
    jump = arg - h_pc - one
    npc = (
        h_pc
        + one
        + g.reglu("jump", [(1.0, jump, o["JMP"]), (1.0, jump, o["JZ"] + is_zero - one)])
    )
    div0 = g.reglu("div0", eq0_terms(one, b, off("DIV")))
    abs_a = g.reglu("|a|", [(1.0, one, a - off("DIV")), (1.0, one, -a - off("DIV"))])
    abs_b = g.reglu("|b|", [(1.0, one, b - off("DIV")), (1.0, one, -b - off("DIV"))])
    a_neg = g.reglu("a<0", ge0_terms(one, -a - one, off("DIV")))
    b_neg = g.reglu("b<0", ge0_terms(one, -b - one, off("DIV")))
    a_min = g.reglu("a==min", eq0_terms(one, a + float(2**31) * one, off("DIV")))
    b_m1 = g.reglu("b==-1", eq0_terms(one, b + one, off("DIV")))

    # Layer 4: magnitude, sign, overflow.
    abs_v = g.reglu("|v|", [(1.0, one, v), (1.0, one, -v)])
    neg_v = g.reglu("v<0", ge0_terms(one, -v - one))
    over_hi = relu(g, "v>max", one, v - float(2**31 - 1) * one)
    over_lo = relu(g, "v<min", one, -v - float(2**31) * one)
    nonzero_q = g.reglu("|a|>=|b|", ge0_terms(one, abs_a - abs_b, off("DIV")))
    ovf_div = relu(g, "ovf_div", one, a_min + b_m1 - one)
    dividend = abs_v + abs_a
    divisor = abs_b + one - o["DIV"]

    # Layer 5: scale the divisor to this digit's place; clamp overflow.
    scaled = g.reglu("S", [(1.0, divisor, f["place"])])
    taken = g.reglu("D*qhigh", [(1.0, divisor, qhigh)])
    ovf = (
        2 * one
        - relu(g, "~hi", one, one - over_hi)
        - relu(g, "~lo", one, one - over_lo)
        + ovf_div
    )
    q_neg = g.reglu(
        "q<0",
        [
            (1.0, one, a_neg - b_neg + nonzero_q - one),
            (1.0, one, b_neg - a_neg + nonzero_q - one),
        ],
    )

    # Layer 6: one digit of the long division; the status token.
    rest = dividend - taken
    digit_terms = []
    for j in range(1, 16):
        digit_terms += ge0_terms(one, rest - j * scaled)
    digit = g.reglu("digit", digit_terms)
    halt = o["HALT"]
    normal = one - halt - div0 - ovf
    neg_normal = relu(g, "minus", one, neg_v + q_neg + normal - one)
    status = (
        float(token_id(HALT)) * halt
        + float(token_id(DIV0)) * div0
        + float(token_id(OVF)) * ovf
        + float(token_id("+")) * normal
        + neg_normal
    )

    # Layer 7: the next token's id.
    chosen = g.reglu(
        "out",
        [(1.0, npc, f["is_d0"]), (1.0, status, f["is_pc"]), (1.0, digit, f["isdig"])],
    )
    g.out = f["outconst"] + chosen
    g.one = one
    return g

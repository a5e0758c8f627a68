"""Formula trees: canonical strings, parsing, length and evaluation."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from neurcore import BitMasks
from neurcore.errors import FormulaSyntaxError
from neurcore.rules import And, AndNot, Leaf, Not, Or, equivalent, parse, quote

names = st.one_of(
    st.sampled_from(["water", "river", "blue", "sky-s", "a_b", "x1"]),
    st.sampled_from(["sky blue", "(paren", "a)b", 'say "hi"', "back\\slash", "AND", "or", "not", ""]),
    st.text(min_size=0, max_size=6),
)
formulas = st.recursive(
    names.map(Leaf),
    lambda sub: st.one_of(
        st.builds(And, sub, sub), st.builds(Or, sub, sub), st.builds(AndNot, sub, sub), st.builds(Not, sub)
    ),
    max_leaves=6,
)


@given(formulas)
def test_canonical_string_round_trips(f):
    assert parse(str(f)) == f
    assert str(parse(str(f))) == str(f)


def test_canonical_form_and_length():
    f = AndNot(Or(Leaf("water"), Leaf("river")), Leaf("blue"))
    assert str(f) == "((water OR river) AND NOT blue)" and len(f) == 3
    assert str(AndNot(Leaf("sky blue"), Leaf("(x)"))) == '("sky blue" AND NOT "(x)")'
    assert str(And(Leaf("a"), Not(Leaf("b")))) == "(a AND (NOT b))"
    assert quote("AND") == '"AND"' and quote('a"b') == '"a\\"b"'
    assert list(f.leaves()) == ["water", "river", "blue"]


@pytest.mark.parametrize("text, expected", [
    ("a OR b AND c", "(a OR (b AND c))"),
    ("a AND NOT b OR c", "((a AND NOT b) OR c)"),
    ("NOT a AND b", "(NOT a AND b)"),
    ("a AND b AND c", "((a AND b) AND c)"),
    ("a OR b OR c", "((a OR b) OR c)"),
    ("(a OR b) AND NOT (c OR d)", "((a OR b) AND NOT (c OR d))"),
    ('"sky blue" OR  water', '("sky blue" OR water)'),
])
def test_precedence_not_and_or(text, expected):
    assert str(parse(text)) == expected


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("a OR", "expected a concept name, NOT or '\\(' at 4"),
    ("(a AND b", "expected '\\)' at 8"),
    ("a b", "expected end of formula at 2"),
    ('"unterminated', "unexpected"),
])
def test_syntax_errors_say_where(text, message):
    with pytest.raises(FormulaSyntaxError, match=message):
        parse(text)


@given(st.integers(0, 2**32 - 1))
def test_evaluate_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((4, 3, 5, 7)) < 0.4
    bm = BitMasks.from_dense(m)
    names = ["a", "b c", "d", "e"]
    f = parse('(a OR "b c") AND NOT d OR NOT e')
    expect = ((m[0] | m[1]) & ~m[2]) | ~m[3]
    assert np.array_equal(f.evaluate(bm, names).to_dense()[0], expect)
    assert np.array_equal(f.evaluate(m, names), expect)  # also on plain bool arrays
    with pytest.raises(KeyError, match="unknown concept 'zz'"):
        parse("a OR zz").evaluate(bm, names)


@given(formulas)
def test_equivalent_to_itself_and_its_mirror_image(f):
    assert equivalent(f, f)
    mirror = {Or: lambda x: Or(x.right, x.left), And: lambda x: And(x.right, x.left)}
    if type(f) in mirror:
        assert equivalent(f, mirror[type(f)](f))


@pytest.mark.parametrize("a, b, same", [
    ("(a AND NOT b)", "(a AND (NOT b))", True),
    ("((a OR b) AND c)", "((a AND c) OR (b AND c))", True),
    ("(NOT (a OR b))", "((NOT a) AND (NOT b))", True),
    ("(a AND NOT a)", "(b AND NOT b)", True),       # both empty
    ("(a OR b)", "(a AND b)", False),
    ("((a AND b) AND NOT c)", "(a AND b)", False),
    ("a", "(a AND b)", False),                      # differ where b is off
])
def test_equivalent_on_every_truth_assignment(a, b, same):
    assert equivalent(parse(a), parse(b)) is same

"""The shared config checks: each names the field and says what it must be."""

import math

import pytest

from wsmerge.config import check_int, check_number


def test_check_int():
    assert check_int(3, "x", 1) == 3 and check_int(0, "x", 0) == 0
    for bad, message in [(True, "x must be an integer, got True"), (2.5, "x must be an integer"),
                         ("3", "x must be an integer"), (0, "x must be a positive integer, got 0"),
                         (-1, "x must be an integer >= 0, got -1")]:
        with pytest.raises(ValueError, match=message):
            check_int(bad, "x", 0 if ">= 0" in message else 1)


def test_check_number():
    assert check_number(0, "y", 0, 1) == 0.0 and isinstance(check_number(1, "y", 0), float)
    for bad, kw, message in [
        (0.0, dict(open_low=True), r"y must be in \(0, inf\), got 0.0"),
        (1, dict(high=1), r"y must be in \[0, 1\), got 1"),
        (-0.5, {}, r"y must be in \[0, inf\)"),
        (math.nan, {}, "y must be finite, got nan"),
        (math.inf, {}, "y must be finite"),
        ("1", {}, "y must be a number, got '1'"),
        (False, {}, "y must be a number"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_number(bad, "y", 0, **kw)

import math

from ptq_deploy.stats import Summary


def test_summary_values_and_order():
    s = Summary.of([1, 2, 3, 4, 100], unit="ms")
    assert s.n == 5 and s.min == 1 and s.max == 100 and s.median == 3 and s.mean == 22
    assert s.median <= s.p90 <= s.p99 <= s.max
    assert abs(s.stdev - 43.6176) < 1e-3 and "n=5" in str(s)


def test_summary_edge_cases():
    assert Summary.of([7.0]).stdev == 0.0
    assert Summary.of([]).n == 0 and math.isnan(Summary.of([]).mean)

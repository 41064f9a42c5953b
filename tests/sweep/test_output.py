"""How listings show values: a speedup below 1 says that the model is slower than fp32."""

from sweep._output import _cell


def test_a_model_slower_than_fp32_is_marked_in_tables() -> None:
    assert _cell("speedup", 2.5) == "2.50x"
    assert _cell("speedup", 1.0) == "1.00x"
    assert _cell("speedup", 0.998) == "1.00x"  # equal as far as the table shows
    assert _cell("speedup", 0.42) == "0.42x slower"
    assert _cell("speedup", None) == "-"

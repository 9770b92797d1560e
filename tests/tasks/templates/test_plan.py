"""Filling a plan's slots with values read from tools."""

from tooltune.tasks.templates.plan import expand_slots, fmt_value


def test_expand_slots():
    values = {"a": 1234567, "b": 2.5, "l": 3, "xs": [1.5, 2]}
    assert expand_slots("<<a>> and <<a:num>>", values) == "1234567 and 1234567"
    assert expand_slots("<<f>> and <<f:num>>", {"f": 1.23456789}) == "1.2346 and 1.23456789"
    assert fmt_value(1234567) == "1,234,567"  # as prompts quote figures
    assert expand_slots({"link": "<<l:raw>>"}, values) == {"link": 3}
    assert expand_slots("<<xs:sum>>", values) == "1.5 + 2"
    assert expand_slots("<<missing>>", values) == "<<missing>>"

"""Filling a plan's slots with values read from tools."""

from tooltune.tasks.templates.plan import expand_slots


def test_expand_slots():
    values = {"a": 1234567, "b": 2.5, "l": 3, "xs": [1.5, 2]}
    assert expand_slots("<<a>> and <<a:num>>", values) == "1,234,567 and 1234567"
    assert expand_slots({"link": "<<l:raw>>"}, values) == {"link": 3}
    assert expand_slots("<<xs:sum>>", values) == "1.5 + 2"
    assert expand_slots("<<missing>>", values) == "<<missing>>"

"""The command line: kernel-expression parsing and the info command."""

import pytest

from cellfate_gpu.cli import KernelTerm, main, parse_kernel_spec


def test_parse_weighted_sum():
    terms = parse_kernel_spec(
        "pseudotime:time_key=dpt_pseudotime:weight=0.8:frac_to_keep=0.2 + connectivity:weight=0.2"
    )
    assert terms == [
        KernelTerm("pseudotime", 0.8, {"time_key": "dpt_pseudotime"}, {"frac_to_keep": 0.2}),
        KernelTerm("connectivity", 0.2, {}, {}),
    ]


def test_parse_values_are_typed():
    (term,) = parse_kernel_spec("velocity:backward=true:softmax_scale=none:similarity=cosine")
    assert term.init == {"backward": True}
    assert term.compute == {"softmax_scale": None, "similarity": "cosine"}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("magic", "Unknown kernel 'magic'"),
        ("pseudotime:frac", "Malformed item 'frac'"),
        ("pseudotime + ", "Empty term"),
    ],
)
def test_parse_errors_name_the_culprit(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_kernel_spec(spec)


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "scipy" in out and "available" in out

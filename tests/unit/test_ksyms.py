"""Kernel function names for stack frames, from a kallsyms file
(profiler/ksyms.py TextSymbols), as BCC's ksym() gives them."""

from __future__ import annotations

from profiler import ksyms

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81001000 t do_one
ffffffff81001000 T __x64_do_one
ffffffff81001000 T __ia32_do_one
ffffffff81002000 D some_data
ffffffff81003000 W weak_fn
ffffffff81004000 t local_only
ffffffff81004000 t local_alias
ffffffffc0001000 t mod_fn\t[ext4]
ffffffffc0002000 t bpf_prog_6deef7357e7b4530_lp_mmap_start\t[bpf]
0000000000000000 T hidden
"""


def symbols(tmp_path, text: str = KALLSYMS) -> ksyms.TextSymbols:
    path = tmp_path / "kallsyms"
    path.write_text(text)
    return ksyms.TextSymbols(path)


def test_frames_are_named_by_the_nearest_function_at_or_below(tmp_path):
    table = symbols(tmp_path)
    assert table.frame(0xFFFFFFFF81000000) == "_stext+0x0"
    assert table.frame(0xFFFFFFFF81000FFF) == "_stext+0xfff"
    # Data symbols are not functions: the function before them goes on.
    assert table.frame(0xFFFFFFFF81002010) == "__ia32_do_one+0x1010"
    assert table.frame(0xFFFFFFFF81003004) == "weak_fn+0x4"
    assert table.frame(0xFFFFFFFFC0001010) == "mod_fn+0x10"  # no module suffix, as BCC
    assert table.frame(0xFFFFFFFFC0002042) == "bpf_prog_6deef7357e7b4530_lp_mmap_start+0x42"
    assert table.frame(0xFFFFFFFF80000000) == "[unknown]"  # below the first


def test_aliases_take_the_last_global_name_else_the_last(tmp_path):
    table = symbols(tmp_path)
    assert table.frame(0xFFFFFFFF81001000) == "__ia32_do_one+0x0"
    assert table.frame(0xFFFFFFFF81004008) == "local_alias+0x8"


def test_hidden_addresses_leave_the_table_empty(tmp_path):
    hidden = "".join(f"0000000000000000 {kind} name{i}\n" for i, kind in enumerate("tTwW"))
    assert len(symbols(tmp_path, hidden)) == 0
    assert len(ksyms.TextSymbols(tmp_path / "missing")) == 0


def test_lines_cut_by_the_read_blocks_are_read_whole(tmp_path, monkeypatch):
    whole = symbols(tmp_path)
    for block_bytes in (1, 7, 40, 64):
        monkeypatch.setattr(ksyms, "_BLOCK_BYTES", block_bytes)
        cut = symbols(tmp_path)
        assert len(cut) == len(whole) == 6
        for address in (0xFFFFFFFF81001000, 0xFFFFFFFF81004008, 0xFFFFFFFFC0002042):
            assert cut.frame(address) == whole.frame(address)


def test_a_last_line_without_its_newline_and_short_lines(tmp_path):
    table = symbols(tmp_path, "ffffffff81000000 T first\nbroken line\n\nffffffff81000100 t last")
    assert len(table) == 2
    assert table.frame(0xFFFFFFFF81000104) == "last+0x4"
    assert table.frame(0xFFFFFFFF81000004) == "first+0x4"


def test_an_address_of_fewer_digits_is_read(tmp_path):
    table = symbols(tmp_path, "c0100000 T low32\n1f t tiny\n")
    assert table.frame(0xC0100010) == "low32+0x10"
    assert table.frame(0x20) == "tiny+0x1"

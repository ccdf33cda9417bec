import pytest

from keras_facemargin.data import read_identity_groups, write_identity_groups


def test_round_trip_keeps_names_with_spaces(tmp_path):
    path = str(tmp_path / "sub" / "groups.txt")
    groups = [["George W Bush", "George_W_Bush"], ["a", "b", "c"]]
    write_identity_groups(path, groups, comment="made by a test")
    text = open(path, encoding="utf-8").read()
    assert text == "# made by a test\nGeorge W Bush\tGeorge_W_Bush\na\tb\tc\n"
    assert read_identity_groups(path) == groups


def test_typed_file_with_spaces_comments_and_blank_lines(tmp_path):
    path = tmp_path / "groups.txt"
    path.write_text("# merged by hand\n\nn001 n002\n  # indented comment\nn003\tn004\tn005\n")
    assert read_identity_groups(str(path)) == [["n001", "n002"], ["n003", "n004", "n005"]]


def test_errors_name_the_argument_and_the_line(tmp_path):
    with pytest.raises(ValueError, match=r"--merge-identities must be an existing text file of identity "
                       r"groups; got '.*nothing.txt' \(no such file\)"):
        read_identity_groups(str(tmp_path / "nothing.txt"), argument="--merge-identities")
    path = tmp_path / "groups.txt"
    path.write_text("a\tb\nlonely\n")
    with pytest.raises(ValueError, match=r"--merge-identities '.*groups.txt', line 2: expected at least 2 "
                       r"identity names separated by tabs; got 'lonely'"):
        read_identity_groups(str(path), argument="--merge-identities")
    path.write_bytes(b"a\tb\n\xff\xfe\n")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_identity_groups(str(path), argument="--merge-identities")
    with pytest.raises(ValueError, match="must not hold a tab"):
        write_identity_groups(str(tmp_path / "x.txt"), [["a\tb", "c"]])

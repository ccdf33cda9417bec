"""Groups of identity names, one group a line, as `facemargin duplicates` writes them and
`facemargin train --merge-identities` reads them."""

import os

from keras_facemargin import _checks


def write_identity_groups(path, groups, comment=None):
    """Writes groups of identity names to a text file: one group a line, names tab-separated.

    Args:
        path: the file to write (its folder is made if missing).
        groups: sequences of identity names; a name may not hold a tab or a line break.
        comment: an optional first line, written after `# `.
    """
    lines = [] if comment is None else [f"# {comment}"]
    for group in groups:
        for name in group:
            if "\t" in name or "\n" in name or "\r" in name:
                raise ValueError(f"identity names must not hold a tab or a line break; got {name!r}")
        lines.append("\t".join(group))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def read_identity_groups(path, argument="path"):
    """The groups of a file `write_identity_groups` wrote (or a person typed).

    Each line is one group of tab-separated names (a line without a tab is split at spaces);
    blank lines and lines starting with `#` are skipped.

    Args:
        path: the text file.
        argument: the name its errors give the file, such as `"--merge-identities"`.

    Returns:
        A list of lists of names, in the file's order.

    Raises:
        ValueError: no such file, not UTF-8 text, or a line with fewer than two names.
    """
    _checks.check_existing_file(argument, path, "text file of identity groups")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{argument} {path!r} is not UTF-8 text ({error.reason} at byte "
                         f"{error.start})") from None
    groups = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        names = [n.strip() for n in line.split("\t")] if "\t" in line else line.split()
        names = [n for n in names if n]
        if len(names) < 2:
            raise ValueError(f"{argument} {path!r}, line {number}: expected at least 2 identity names "
                             f"separated by tabs; got {line!r}")
        groups.append(names)
    return groups

"""Fixtures' building blocks for the data tests: the real faces folder and corrupt files."""

import os
import shutil

FACES = os.path.join(os.path.dirname(__file__), "data", "faces")
NAMES = ("John_Salley", "John_Savage", "John_Schneider", "John_Shimkus", "John_Simm")


def copy_faces(dest):
    """A writable copy of the 5 × 11 faces folder; returns its path."""
    dest = os.path.join(dest, "faces")
    shutil.copytree(FACES, dest, ignore=shutil.ignore_patterns("*.md"))
    return dest


def first_image(root, name):
    folder = os.path.join(root, name)
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def corrupt(path, how):
    """Turns the JPEG at `path` into a broken one: 'garbage', 'truncated' or 'empty'."""
    with open(path, "rb") as f:
        data = f.read()
    if how == "garbage":
        data = b"this is not an image" * 10
    elif how == "truncated":
        data = data[: len(data) // 3]
    elif how == "empty":
        data = b""
    with open(path, "wb") as f:
        f.write(data)

"""Docstrings at Keras length: every public function and class says what it takes and returns,
and no docstring quotes a timing (figures that age belong in BENCHMARKS.md).

Public means what a subpackage's `__init__.py` exports in `__all__`, plus the public functions and
classes defined in the top-level modules, and the public methods those classes define. A function
with parameters (besides self, cls, *args and **kwargs) needs an `Args:` section naming each of
them (a dataclass or named tuple may call it `Attributes:`); a function whose body has a
`return <value>` needs `Returns:` (a generator `Yields:`; classes are exempt from both).
"""

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
import textwrap

import keras_facemargin

SUBPACKAGES = ("data", "evaluation", "heads", "losses", "models")
TOP_LEVEL_MODULES = ("cli", "config", "distribute", "experiments", "export", "optimizers", "recipe",
                     "registry", "training")

NOT_YET_CHECKED_MODULES = ()

# A number with a time unit, or a throughput: a measured figure.
TIMING = re.compile(
    r"\d ?(?:ms|µs|μs)\b|\d s\b|\d ?(?:sec|seconds)\b|images/s\b|samples/s\b|steps/s\b"
    r"|\d ?[×x] (?:faster|slower)\b|GB/s\b|GiB/s\b"
)
SECTION = re.compile(r"^(?P<indent> *)(?P<title>[A-Z][A-Za-z ]*):$", re.MULTILINE)
SKIPPED_PARAMETERS = ("self", "cls")


def _checked(module_name):
    return not any(module_name == name or module_name.startswith(name + ".")
                   for name in NOT_YET_CHECKED_MODULES)


def public_objects():
    """`{"heads.CosineHead": CosineHead, ...}`: every public function and class."""
    found = {}
    for sub in SUBPACKAGES:
        module = importlib.import_module(f"keras_facemargin.{sub}")
        for name in module.__all__:
            obj = getattr(module, name)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and _checked(obj.__module__):
                found[f"{sub}.{name}"] = obj
    for sub in TOP_LEVEL_MODULES:
        module_name = f"keras_facemargin.{sub}"
        if not _checked(module_name):
            continue
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if obj.__module__ == module_name:
                found[f"{sub}.{name}"] = obj
    return found


def _parameters(obj):
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in signature.parameters.values()
            if p.kind not in variadic and p.name not in SKIPPED_PARAMETERS]


def _section(doc, titles):
    """The text of the first section of `doc` titled one of `titles`, or None."""
    headers = list(SECTION.finditer(doc))
    for i, header in enumerate(headers):
        if header.group("title") in titles:
            end = len(doc)
            for later in headers[i + 1:]:
                if len(later.group("indent")) <= len(header.group("indent")):
                    end = later.start()
                    break
            return doc[header.end():end]
    return None


def _results(function):
    """`(returns, yields)`: whether `function`'s own body (not a nested function's) has a
    `return <value>`, and whether it has a `yield`."""
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return False, False
    tree = ast.parse(source)
    definition = next(node for node in ast.walk(tree)
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))
    returns = yields = False
    pending = list(definition.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            returns = True
        yields = yields or isinstance(node, (ast.Yield, ast.YieldFrom))
        pending.extend(ast.iter_child_nodes(node))
    return returns, yields


def _is_record(obj):
    """A dataclass or named tuple, whose fields may be documented as `Attributes:`."""
    return inspect.isclass(obj) and (dataclasses.is_dataclass(obj) or
                                     (issubclass(obj, tuple) and hasattr(obj, "_fields")))


def _problems(name, obj):
    doc = inspect.getdoc(obj) or ""
    if not doc:
        return [f"{name}: no docstring"]
    problems = []
    parameters = _parameters(obj)
    titles = ("Args", "Attributes") if _is_record(obj) else ("Args",)
    args = _section(doc, titles)
    if parameters and args is None:
        problems.append(f"{name}: no {' or '.join(t + ':' for t in titles)} section "
                        f"(parameters: {', '.join(parameters)})")
    elif parameters:
        missing = [p for p in parameters if not re.search(rf"(?<![\w.]){re.escape(p)}\b", args)]
        if missing:
            problems.append(f"{name}: {titles[0]}: does not describe {', '.join(missing)}")
    if inspect.isfunction(obj):
        returns, yields = _results(obj)
        if yields and _section(doc, ("Yields", "Returns")) is None:
            problems.append(f"{name}: yields but has no Yields: section")
        elif returns and not yields and _section(doc, ("Returns",)) is None:
            problems.append(f"{name}: returns a value but has no Returns: section")
    return problems


def _docstrings():
    """(where, docstring) of every checked module, public object and public method."""
    for info in pkgutil.walk_packages(keras_facemargin.__path__, "keras_facemargin."):
        if _checked(info.name):
            module = importlib.import_module(info.name)
            yield info.name, module.__doc__ or ""
    for name, obj in public_objects().items():
        yield name, inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            for attribute, member in vars(obj).items():
                if not attribute.startswith("_"):
                    yield f"{name}.{attribute}", inspect.getdoc(member) or ""


def test_the_walk_finds_the_public_api():
    found = public_objects()
    for name in ("heads.CosineHead", "losses.get", "models.iresnet18", "training.fit_resumable",
                 "registry.get", "evaluation.roc", "data.classification_dataset"):
        assert name in found, name
    assert len(found) > 120


def public_methods():
    """`{"data.ImageIndex.subset": function, ...}`: the public methods a public class defines.

    A method that overrides one of a base class (Keras's `call`, `get_config`, `on_epoch_end`; a
    loss's `apply_margin`) is documented where the base defines it, and is not listed again.
    """
    found = {}
    for name, cls in public_objects().items():
        if not inspect.isclass(cls):
            continue
        for attribute, member in vars(cls).items():
            function = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            if attribute.startswith("_") or not inspect.isfunction(function):
                continue
            if any(attribute in vars(base) for base in cls.__mro__[1:]):
                continue
            found[f"{name}.{attribute}"] = function
    return found


def test_every_public_function_and_class_documents_its_arguments_and_result():
    problems = [p for name, obj in sorted(public_objects().items()) for p in _problems(name, obj)]
    assert not problems, f"{len(problems)} docstring problems:\n" + "\n".join(problems)


def test_every_public_method_documents_its_arguments_and_result():
    found = public_methods()
    assert "data.ImageIndex.from_directory" in found and "heads.PartialFC.sample" in found
    assert "losses.ArcFaceLoss.apply_margin" not in found  # documented on MarginSoftmaxLoss
    problems = [p for name, method in sorted(found.items()) for p in _problems(name, method)]
    assert not problems, f"{len(problems)} docstring problems:\n" + "\n".join(problems)


def test_no_docstring_quotes_a_timing():
    offenders = [f"{where}: {match.group(0)!r} in ...{doc[max(0, match.start() - 40):match.end() + 20]!r}..."
                 for where, doc in _docstrings() for match in [TIMING.search(doc)] if match]
    assert not offenders, "timings belong in BENCHMARKS.md:\n" + "\n".join(offenders)

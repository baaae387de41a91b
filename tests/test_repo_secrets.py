"""No credentials in the repository: every tracked text file is scanned for the shapes real
secrets take (AWS access key ids, private key blocks, secret keys and passwords given as
long literal values). Test and demo credentials are short dummies ("testing") or generated
at run time (make run writes SeaweedFS's keys into its state directory, never into git).

Structured files are also read as the data they hold, so a secret nested at any depth is
found whatever its spelling: a ``password`` inside a DAG Param's ``model_options`` default,
an ``api_key`` in a conf, an unquoted YAML value — shapes the text patterns cannot see."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tilescope.params import _SECRET_WORDS

REPO = Path(__file__).resolve().parents[1]
PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"),
    # a secret-looking name assigned a long literal (≥ 20 chars of key alphabet)
    "secret literal": re.compile(
        r"""(?i)(?:secret(?:_access)?_key|password|passwd|api_key|token)["']?\s*[:=]\s*"""
        r"""["']([A-Za-z0-9/+=_\-]{20,})["']"""),
}
#: names of keys whose value is a credential: the words InferenceParams refuses in backend
#: options, plus spellings config files use
SECRET_NAME = re.compile("|".join(map(re.escape, (*_SECRET_WORDS, "passwd", "private_key",
                                                  "api-key"))), re.IGNORECASE)
#: a value naming itself a dummy is no credential ("testing", "test-sk", "example-key")
DUMMY_WORDS = ("test", "example", "dummy", "fake", "changeme", "placeholder")
#: a value filled in at run time (``${VAR}``, ``{{ conn.password }}``, ``%(pw)s``,
#: ``<your key>``) or elided (``sk-...``)
REFERENCE = re.compile(r"\$\{|\{\{|%\(|^<.*>$|\.\.\.|…")
#: shorter literals are taken for dummies ("p@ss", "test"); real keys and passwords are longer
MIN_SECRET_LENGTH = 8
FENCED = re.compile(r"^```(json|ya?ml)\s*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def is_literal_secret(value: object) -> bool:
    """Whether a value under a secret-named key is a credential written into the file: a
    string long enough to be one that is neither a run-time reference nor a declared dummy."""
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return False
    lowered = value.lower()
    return not REFERENCE.search(value) and not any(word in lowered for word in DUMMY_WORDS)


def nested_secrets(data: object, path: str = "") -> Iterator[str]:
    """Dotted paths of literal secrets at any depth of parsed JSON/YAML/TOML (dicts in lists
    in dicts …); a string that is itself a JSON object — a conf — is opened too."""
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            if SECRET_NAME.search(str(key)) and is_literal_secret(value):
                yield where
            yield from nested_secrets(value, where)
    elif isinstance(data, list):
        for index, item in enumerate(data):
            yield from nested_secrets(item, f"{path}[{index}]")
    elif isinstance(data, str) and data.lstrip().startswith("{"):
        try:
            conf = json.loads(data)
        except json.JSONDecodeError:
            return  # braces in prose or code, not a conf
        yield from nested_secrets(conf, path)


def _literal(node: ast.expr | None) -> object:
    """The string a node writes literally: a constant, or a ``Param("...")`` default."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Call) and "Param" in (getattr(node.func, "id", None),
                                                  getattr(node.func, "attr", None)):
        default = node.args[0] if node.args else next(
            (k.value for k in node.keywords if k.arg == "default"), None)
        return _literal(default)
    return None


def python_secrets(source: str) -> Iterator[tuple[int, str]]:
    """``(line, name)`` of literal secrets in Python source: dict entries at any depth (DAG
    Param defaults, confs, option dicts), keyword arguments, assignments, and JSON objects
    written as string literals."""
    for node in ast.walk(ast.parse(source)):
        named: list[tuple[str, ast.expr | None]] = []
        if isinstance(node, ast.Dict):
            named = [(k.value, v) for k, v in zip(node.keys, node.values, strict=True)
                     if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        elif isinstance(node, ast.keyword) and node.arg:
            named = [(node.arg, node.value)]
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            named = [(getattr(t, "id", None) or getattr(t, "attr", ""), node.value)
                     for t in targets]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield from ((node.lineno, f"in a JSON string: {where}")
                        for where in nested_secrets(node.value))
            continue
        for name, value in named:
            if SECRET_NAME.search(name) and is_literal_secret(_literal(value)):
                yield getattr(value, "lineno", getattr(node, "lineno", 0)), name


def structured_secrets(path: Path, text: str) -> Iterator[str]:
    """Where a file, read as the data it holds, writes a literal secret (empty for kinds of
    file that hold no structure: the text patterns cover those)."""
    suffix = path.suffix.lower()
    if suffix == ".py":
        yield from (f"line {line}: {name}" for line, name in python_secrets(text))
    elif suffix == ".json":
        yield from nested_secrets(json.loads(text))
    elif suffix in (".yaml", ".yml"):
        for document in yaml.safe_load_all(text):
            yield from nested_secrets(document)
    elif suffix == ".toml":
        yield from nested_secrets(tomllib.loads(text))
    elif suffix == ".md":
        for match in FENCED.finditer(text):
            try:
                data = json.loads(match[2]) if match[1] == "json" else yaml.safe_load(match[2])
            except (json.JSONDecodeError, yaml.YAMLError):
                continue  # an excerpt with "…" in it, not a document
            yield from (f"a {match[1]} block: {where}" for where in nested_secrets(data))


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}): nothing tracked to scan")
    files = []
    for name in names:
        path = REPO / name
        if path.is_file() and path.stat().st_size < 2_000_000:
            data = path.read_bytes()
            if b"\0" not in data[:4096]:
                files.append(path)
    return files


def test_patterns_catch_real_looking_secrets() -> None:
    # assembled at run time, so this file holds no credential-shaped literal of its own
    key_id = "AKIA" + "IOSFODNN7" + "EXAMPLE"
    secret = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
    assert PATTERNS["AWS access key id"].search(f"key = {key_id}")
    assert PATTERNS["secret literal"].search(f'aws_secret_access_key="{secret}"')
    assert PATTERNS["secret literal"].search('"pass' + 'word": "correct-horse-battery-staple"')
    assert not PATTERNS["secret literal"].search('"password": "testing"')


#: a credential the text patterns miss (short of 20 chars, a "." outside their alphabet);
#: assembled at run time, like every secret in this file
NESTED = "horse." + "battery9" + "Staple"


@pytest.mark.parametrize(("name", "text", "where"), [
    ("dags/leaky.py",
     'from airflow.sdk import Param\nPARAMS = {\n    "model_options": Param({"conn_id": "m",\n'
     f'        "auth": {{"api_key": "{NESTED}"}}}}, type="object"),\n}}\n', "line 4: api_key"),
    ("dags/conf.py", f'CONF = """{{"moderation_options": {{"password": "{NESTED}"}}}}"""\n',
     "line 1: in a JSON string: moderation_options.password"),
    ("dags/param.py", f'params = {{"token": Param("{NESTED}")}}\n', "line 1: token"),
    ("conf/run.json", json.dumps({"conf": {"model_options": {"aws": [
        {"secret_access_key": NESTED}]}}}), "conf.model_options.aws[0].secret_access_key"),
    ("conf/run.yaml", f"model_options:\n  credentials:\n    password: {NESTED}\n",
     "model_options.credentials.password"),
    ("pyproject.toml", f'[tool.demo.model_options]\napi_key = "{NESTED}"\n',
     "tool.demo.model_options.api_key"),
    ("README.md", f'Run:\n\n```json\n{{"model_options": {{"api-key": "{NESTED}"}}}}\n```\n',
     "a json block: model_options.api-key"),
])
def test_structured_scan_finds_a_secret_nested_in_options(name: str, text: str,
                                                          where: str) -> None:
    assert not any(p.search(text) for p in PATTERNS.values())  # the text patterns miss it
    assert list(structured_secrets(Path(name), text)) == [where]
    for harmless in ("testing", "${MODEL_API_KEY}", "{{ conn.model.password }}", "sk-..."):
        quoted = f'"{harmless}"' if name.endswith(".yaml") else harmless  # YAML needs quotes
        assert list(structured_secrets(Path(name), text.replace(NESTED, quoted))) == []


def test_no_secrets_in_tracked_files() -> None:
    files = tracked_text_files()
    assert len(files) > 50
    found = []
    for path in files:
        text = path.read_text(errors="replace")
        for kind, pattern in PATTERNS.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(REPO)}:{line}: {kind}")
        found.extend(f"{path.relative_to(REPO)}: {where}: literal secret"
                     for where in structured_secrets(path, text))
    assert not found, "credentials in the repository:\n" + "\n".join(found)

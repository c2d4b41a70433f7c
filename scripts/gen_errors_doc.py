"""Write ``docs/errors.md``: every stable error reason, as the code raises it.

The list of reasons is :data:`mobilesign.rpc.reasons.REASONS`; everything else in the table is
read from the code (its syntax tree, nothing is run): each call that passes an upper-case reason
to an error, an identifier format or a status (:func:`scan`), the kind it passes or its error
class fixes (hence the status code, through :data:`mobilesign.rpc.status.CODES`), the folder it
is in, its message and its ``ErrorInfo`` metadata keys; and the protocol core's
:class:`mobilesign.twoparty.Reason` values with their documentation. Whether a reason is worth
retrying is :func:`mobilesign.rpc.status.retry_delay`. ``tests/unit/test_errors_doc.py`` checks
that the file is what this writes, ``tests/unit/rpc/test_reasons.py`` that the list is what the
code raises.

    python -m scripts.gen_errors_doc [--out docs/errors.md]
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from mobilesign.errors import Kind
from mobilesign.rpc import status
from mobilesign.rpc.reasons import REASONS
from mobilesign.twoparty import ProtocolError, Reason

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "errors.md"

#: The folders scanned, each with the name the table gives it, in the table's order.
PACKAGES = {
    "server": "gateway",
    "cosigner": "cosigner",
    "ra": "RA",
    "hsm_proxy": "HSM proxy",
    "client": "SDK",
    "mobilesign": "shared library",
}
_REASON = re.compile(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+|[A-Z]{4,}")
#: Calls whose upper-case string arguments are reasons: error constructors, identifier formats
#: (their default reason, or the caller's), and the status details written directly.
_REASON_CALLS = ("Error", "Failed", "IdFormat", "check", "status_metadata")
#: Calls that refuse through an error class of another name: an identifier format's check.
_REFUSED_AS = {"IdFormat": "IdError", "check": "IdError"}
#: At most this many distinct messages make up a reason's meaning.
_MESSAGES = 3


@dataclass(frozen=True)
class Site:
    """One place the code raises a reason: the folder, the kinds it is raised with, its message
    ("" when not written out) and the keys of the ``ErrorInfo`` metadata it adds."""

    reason: str
    package: str
    kinds: frozenset[Kind]
    message: str
    metadata: tuple[str, ...]


def raised_reasons(root: Path = ROOT) -> set[str]:
    """Every reason the shipped code passes to an error, an identifier check or a status."""
    return {site.reason for site in scan(root)}


def scan(root: Path = ROOT) -> list[Site]:
    """Every place under ``root`` that raises a reason, in folder and file order, then the
    protocol core's reasons (an enum, raised by value)."""
    trees = [(top, ast.parse(path.read_text())) for top, path in _sources(root)]
    kinds = _class_kinds(tree for _, tree in trees)
    sites = [site for top, tree in trees for site in _sites(top, tree, kinds)]
    return sites + _protocol_sites()


def _sources(root: Path) -> Iterator[tuple[str, Path]]:
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            # The generated protobuf modules raise nothing.
            if "v1" not in path.relative_to(root).parts[:2]:
                yield top, path


def _kind(node: ast.AST | None) -> Kind | None:
    """The kind a ``Kind.X`` or ``grpc.StatusCode.X`` expression stands for."""
    if not isinstance(node, ast.Attribute):
        return None
    owner = ast.unparse(node.value)
    if owner == "Kind" and node.attr in Kind.__members__:
        return Kind[node.attr]
    if owner.endswith("StatusCode") and node.attr in grpc.StatusCode.__members__:
        return status.kind_of(grpc.StatusCode[node.attr])
    return None


def _called(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _init_kind(cls: ast.ClassDef) -> Kind | None:
    """The kind a class's ``__init__`` passes to ``super().__init__``: a fixed one, or the
    default of its parameter."""
    for item in cls.body:
        if not (isinstance(item, ast.FunctionDef) and item.name == "__init__"):
            continue
        params = [*item.args.posonlyargs, *item.args.args]
        defaults: dict[str, ast.expr | None] = {
            p.arg: d for p, d in zip(params[::-1], item.args.defaults[::-1], strict=False)
        }
        defaults.update(
            (p.arg, d) for p, d in zip(item.args.kwonlyargs, item.args.kw_defaults, strict=True)
        )
        for node in ast.walk(item):
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func) == "super().__init__"
                and node.args
            ):
                first = node.args[0]
                if isinstance(first, ast.Name):
                    return _kind(defaults.get(first.id))
                return _kind(first)
    return None


def _class_kinds(trees: Iterable[ast.AST]) -> dict[str, Kind]:
    """The kind each error class raises with when a call does not name one, inherited."""
    own: dict[str, Kind] = {}
    bases: dict[str, list[str]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                kind = _init_kind(node)
                if kind is not None:
                    own[node.name] = kind

    def resolved(name: str, seen: frozenset[str]) -> Kind | None:
        if name in own:
            return own[name]
        for base in bases.get(name, ()):
            if base not in seen and (kind := resolved(base, seen | {name})) is not None:
                return kind
        return None

    return {name: kind for name in bases if (kind := resolved(name, frozenset())) is not None}


def _text(node: ast.expr | None) -> str:
    """A message as written: an f-string's fields become "…"; anything computed is ""."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(str(v.value) if isinstance(v, ast.Constant) else "…" for v in node.values)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and not node.args:
        # "...".strip() and the like: the text before the method.
        return _text(node.func.value)
    return ""


def _sites(top: str, tree: ast.AST, class_kinds: dict[str, Kind]) -> Iterator[Site]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _called(node)
        if not name.endswith(_REASON_CALLS):
            continue
        arguments = [*node.args, *(k.value for k in node.keywords)]
        kinds = frozenset(
            kind for arg in arguments for n in ast.walk(arg) if (kind := _kind(n)) is not None
        )
        if not kinds and (kind := class_kinds.get(_REFUSED_AS.get(name, name))) is not None:
            kinds = frozenset({kind})
        metadata = tuple(
            key.value
            for arg in arguments
            if isinstance(arg, ast.Dict)
            for key in arg.keys
            if isinstance(key, ast.Constant) and isinstance(key.value, str)
        )
        keywords = {k.arg: k.value for k in node.keywords}
        for index, arg in enumerate(arguments):
            if not (
                isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and _REASON.fullmatch(arg.value)
            ):
                continue
            # The message follows the reason, positionally or as ``message=``.
            after = index + 1
            message = node.args[after] if after < len(node.args) else keywords.get("message")
            yield Site(arg.value, top, kinds, _text(message), metadata)


def _protocol_sites() -> list[Site]:
    """The protocol core's reasons, each meaning its member's documentation."""
    source = inspect.getsource(Reason)
    documented: dict[str, str] = {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for assign, doc in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(assign, ast.Assign)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
        ):
            documented[ast.unparse(assign.targets[0])] = str(doc.value.value)
    return [
        Site(
            reason.value,
            "mobilesign",
            frozenset({ProtocolError(reason).kind}),
            documented.get(reason.name, ""),
            (),
        )
        for reason in Reason
    ]


_HEADER = """\
# Error reasons

<!-- Generated by `python -m scripts.gen_errors_doc` from the code; do not edit. -->

Every refusal of every mobilesign service is a gRPC status whose details
(`grpc-status-details-bin`, a `google.rpc.Status`) hold a `google.rpc.ErrorInfo` with the
domain `mobilesign.v1` and a `reason` from the table below; a few add values to act on in
`ErrorInfo.metadata` (named under *meaning*). Branch on the reason: the message is for people
and may change. Reasons are stable API: a listed reason keeps its meaning; new ones may be added,
so treat a reason you do not know by its status code. The list is `mobilesign/rpc/reasons.py`,
which a test keeps equal to what the code raises; this file is generated from the code
(`python -m scripts.gen_errors_doc`), and a test keeps it current.

- *status code*: the gRPC code the reason is sent with, from the kind of error it is raised with
  (`mobilesign.rpc.status.CODES`).
- *raised by*: where the code raises it: the gateway (`server/`), the cosigner (`cosigner/`),
  the RA (`ra/`), the HSM proxy (`hsm_proxy/`), the SDK (`client/`: raised in the phone or
  administrator's process as `ClientError` with that kind, never sent), or the shared library
  (`mobilesign/`: any service using that part). A service relaying a callee's refusal passes
  its code and reason on unchanged, so a reason may arrive from a service that did not raise it;
  a callee that cannot be reached becomes `UNAVAILABLE` `<CALLEE>_UNAVAILABLE`.
- *retry*: whether the same call may succeed later. Such a refusal also carries a
  `google.rpc.RetryInfo` detail whose `retry_delay` says how long to wait first
  (`mobilesign.rpc.status.RETRY_DELAYS`); in Python, `mobilesign.rpc.status.retry_delay_of`,
  and in the SDK `ClientError.retry_delay`. Without one, trying again fails the same way.
- *meaning*: the messages it is raised with (`…` where the message fills in a value; empty where
  it passes on another error's text), or for the two-party protocol's reasons
  (`mobilesign.twoparty.Reason`) their documentation.

`buf curl` prints a failed call as JSON on standard error: the code, the message, and each
detail's `type` and `value`, the detail's protobuf encoding in base64 (ErrorInfo's field 1 is the
reason, 2 the domain, 3 the metadata; RetryInfo's field 1 the delay). `grpcurl` lists the
details under `Details` (`-format-error` for JSON). In Python, `mobilesign.rpc.status.reason_of`
and `error_info` read them from a `grpc.RpcError`. For example, with the development PKI of
`make run`:

```sh
BUF=.tools/node_modules/.bin/buf
PKI=var/pki
$BUF curl --protocol grpc --cacert $PKI/ca.pem --cert $PKI/admin.pem --key $PKI/admin.key \\
  -d '{"key_id": "nope"}' https://127.0.0.1:50051/mobilesign.v1.HsmService/GetPublicKey
# {
#    "code": "invalid_argument",
#    "message": "a key id is 32 hexadecimal digits",
#    "details": [
#       {
#          "type": "google.rpc.ErrorInfo",
#          "value": "ChBNQUxGT1JNRURfS0VZX0lEEg1tb2JpbGVzaWduLnYx"
#       }
#    ]
# }
echo ChBNQUxGT1JNRURfS0VZX0lEEg1tb2JpbGVzaWduLnYx | base64 -d \\
  | .venv/bin/python -m grpc_tools.protoc --decode_raw   # 1: "MALFORMED_KEY_ID" 2: "mobilesign.v1"
grpcurl -cacert $PKI/ca.pem -cert $PKI/admin.pem -key $PKI/admin.key \\
  -d '{"key_id": "nope"}' 127.0.0.1:50051 mobilesign.v1.HsmService/GetPublicKey
```

| reason | status code | raised by | retry | meaning |
|---|---|---|---|---|
"""


def _retry(reason: str, kinds: Iterable[Kind]) -> str:
    def said(delay: float | None) -> str:
        return "no" if delay is None else f"after {delay:g} s"

    delays = {status.code_of(k).name: status.retry_delay(k, reason) for k in kinds}
    if len(set(delays.values())) <= 1:
        return said(next(iter(delays.values()), None))
    return "; ".join(f"{code}: {said(delay)}" for code, delay in sorted(delays.items()))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(reason: str, sites: list[Site]) -> str:
    kinds = {kind for site in sites for kind in site.kinds}
    codes = ", ".join(sorted(f"`{status.code_of(k).name}`" for k in kinds)) or "—"
    order = list(PACKAGES)
    tops = sorted({site.package for site in sites}, key=order.index)
    raised_by = ", ".join(PACKAGES[top] for top in tops) or "—"
    messages = list(dict.fromkeys(site.message for site in sites if site.message))
    meaning = "; ".join(messages[:_MESSAGES]) + ("; …" if len(messages) > _MESSAGES else "")
    keys = sorted({key for site in sites for key in site.metadata})
    if keys:
        meaning += f" (metadata: {', '.join(f'`{key}`' for key in keys)})"
    cells = (f"`{reason}`", codes, raised_by, _retry(reason, kinds), _cell(meaning.strip()))
    return f"| {' | '.join(cells)} |\n"


def render(root: Path = ROOT) -> str:
    """The text of ``docs/errors.md`` for the code under ``root``: one row per listed reason."""
    by_reason: dict[str, list[Site]] = {reason: [] for reason in REASONS}
    for site in scan(root):
        if site.reason in by_reason:
            by_reason[site.reason].append(site)
    return _HEADER + "".join(_row(reason, by_reason[reason]) for reason in sorted(by_reason))


def main() -> None:
    """Command line: ``python -m scripts.gen_errors_doc [--out PATH]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DOC)
    parser.parse_args().out.write_text(render())


if __name__ == "__main__":
    main()

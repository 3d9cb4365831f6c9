"""Task descriptors for tests and benchmarks, written the way task authors write them.

One place for the boilerplate every descriptor carries (schema, author, folders, image file),
so that a test states only what it is about: its parameters and resources.
"""

from __future__ import annotations

from collections.abc import Iterable

HEAD = """name: {name}
name_short: {short}
version: {version}
namespace: {namespace}
$schema: https://cytomine.com/schema-store/tasks/task.v0.json
authors:
  - first_name: Ada
    last_name: Lovelace
    organization: Analytical Engines
    email: ada@example.com
    is_contact: true
configuration:
  input_folder: /inputs
  output_folder: /outputs
  image:
    file: /image.tar
"""


def params(types: Iterable[tuple[str, str]]) -> str:
    """Parameters as YAML under ``inputs:``/``outputs:``: (name, type in flow style) pairs."""
    return "".join(f"  {n}:\n    display_name: {n}\n    description: {n}\n    type: {t}\n" for n, t in types)


ADD_INPUTS = params([("a", "integer"), ("b", "integer")])
SUM_OUTPUT = params([("sum", "integer")])


def descriptor(
    namespace: str,
    short: str,
    *,
    inputs: str,
    outputs: str,
    configuration: str = "",
    name: str | None = None,
    version: str = "1.0.0",
) -> bytes:
    """A v0 descriptor; ``configuration`` holds extra lines under ``configuration:`` (indented
    two spaces, e.g. ``"  resources:\\n    ram: 64Mi\\n"``)."""
    head = HEAD.format(name=name or short, short=short, version=version, namespace=namespace)
    return (head + configuration + "inputs:\n" + inputs + "outputs:\n" + outputs).encode()


def resources(ram: str = "64Mi", cpus: float | None = 1, extra: str = "") -> str:
    """A ``resources:`` block for :func:`descriptor`'s ``configuration``."""
    lines = f"  resources:\n    ram: {ram}\n" + (f"    cpus: {cpus}\n" if cpus is not None else "")
    return lines + extra


def add_descriptor(namespace: str, short: str, extra: str = "") -> bytes:
    """An add-integers task: inputs ``a``, ``b``; output ``sum``; 64Mi and one CPU; ``extra``
    lines under ``configuration.resources`` (e.g. ``"    time_limit: 2\n"``)."""
    return descriptor(namespace, short, inputs=ADD_INPUTS, outputs=SUM_OUTPUT, configuration=resources(extra=extra))

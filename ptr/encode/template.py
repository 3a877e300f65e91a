"""Does a chat template only *print* message contents?

If so, the rendered text for a list of roles is fixed text with the contents dropped in, and the
encoder renders each role sequence once (a skeleton) instead of running Jinja per example. The check
is conservative: a template is content-agnostic only if every read of a message's ``content`` is
printed as it is (inside ``+``/``~`` concatenation, at most through ``trim``, a no-op on the stripped
contents the encoder passes), and the message list and messages are otherwise only iterated or read
for other keys. Anything else (a test on content, ``split``, ``tojson``, an alias via ``set``, a macro
taking a message) makes it content-sensitive, and the encoder renders every example in full.
"""

from __future__ import annotations

from jinja2 import nodes
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

_EMIT_THROUGH = (nodes.Add, nodes.Concat)


def _environment():
    try:  # the environment transformers renders with (its {% generation %} tag included)
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template("").environment
    except Exception:
        return ImmutableSandboxedEnvironment(extensions=[loopcontrols])


def _key(node) -> object:
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return node.arg.value
    return None


def _printed(chain: list) -> bool:
    """``chain`` runs from the content read up to the root: is the value only printed?"""
    for parent in chain[1:]:
        if isinstance(parent, nodes.Output):
            return True
        if isinstance(parent, _EMIT_THROUGH):
            continue
        if (
            isinstance(parent, nodes.Filter)
            and parent.name == "trim"
            and not parent.args
            and not parent.kwargs
        ):
            continue
        return False
    return False


def content_agnostic(source) -> bool:
    if not isinstance(source, str):
        return False
    try:
        tree = _environment().parse(source)
    except Exception:
        return False
    loop_vars = set()
    for loop in tree.find_all(nodes.For):
        it = loop.iter.node if isinstance(loop.iter, nodes.Getitem) else loop.iter
        if isinstance(it, nodes.Name) and it.name == "messages" and isinstance(loop.target, nodes.Name):
            loop_vars.add(loop.target.name)

    ok = True

    def message_use(chain: list) -> bool:
        """chain[0] is an expression whose value is one message."""
        parent = chain[1] if len(chain) > 1 else None
        key = _key(parent) if getattr(parent, "node", None) is chain[0] else None
        if key == "content":
            return _printed(chain[1:])
        return isinstance(key, str)  # role or a key our messages lack: the same for any content

    def list_use(chain: list) -> bool:
        """chain[0] is the message list (``messages``)."""
        parent = chain[1] if len(chain) > 1 else None
        if isinstance(parent, nodes.For) and parent.iter is chain[0]:
            return True
        if isinstance(parent, nodes.Filter) and parent.name == "length":
            return True
        if isinstance(parent, nodes.Getitem) and getattr(parent, "node", None) is chain[0]:
            if isinstance(parent.arg, nodes.Slice):  # messages[1:] as a loop's iterable
                return isinstance(chain[2] if len(chain) > 2 else None, nodes.For) and chain[2].iter is parent
            if isinstance(parent.arg, nodes.Const) and isinstance(parent.arg.value, int):
                return message_use(chain[1:])
        return False

    def walk(node, chain: list):
        nonlocal ok
        chain = [node, *chain]
        if isinstance(node, nodes.Name) and (node.name == "messages" or node.name in loop_vars):
            if node.ctx != "load":
                is_loop_target = isinstance(chain[1], nodes.For) and chain[1].target is node
                ok = ok and is_loop_target
            elif node.name == "messages":
                ok = ok and list_use(chain)
            else:
                ok = ok and message_use(chain)
        for child in node.iter_child_nodes():
            walk(child, chain)

    walk(tree, [])
    return ok

"""What an aten op read and wrote, as a ``TorchDispatchMode`` sees it: the small helpers the
numerics trace (``numerics``) and the non-finite origin (``origin``) share."""

from __future__ import annotations


def flat_values(obj):
    """Every leaf of nested lists, tuples and dicts (an op's args and returns)."""
    if isinstance(obj, (list, tuple)):
        for x in obj:
            yield from flat_values(x)
    elif isinstance(obj, dict):
        for k in sorted(obj):
            yield from flat_values(obj[k])
    else:
        yield obj


def op_name(func) -> str:
    """``aten::addmm``; with its overload where not the default (``aten::add.Scalar``)."""
    schema = func._schema
    overload = getattr(func, "_overloadname", "default")
    return schema.name if overload in ("default", "") else f"{schema.name}.{overload}"


def written_arguments(func, args, kwargs) -> list:
    """The arguments an op writes in place (``Tensor(a!)`` in its schema: ``add_``'s self, the
    lists of a ``_foreach_*_``, an ``out=``)."""
    out = []
    for i, arg in enumerate(func._schema.arguments):
        info = arg.alias_info
        if info is not None and info.is_write:
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            if value is not None:
                out.append(value)
    return out

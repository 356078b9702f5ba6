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


# allocations: what they hold is whatever memory held (a trace hashes nothing of it; the NaN
# origin takes no NaN bit pattern in it for a value an op made)
UNINITIALISED = ("aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty",
                 "aten::new_empty_strided", "aten::_empty_affine_quantized", "aten::resize_")


def only_views(func) -> bool:
    """Whether every output of ``func`` is a view of an input (it computes no value)."""
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


# FSDP2's gathers run through flat buffers whose padding (shards of unequal size) is never
# initialised, and which are viewed before the gather fills them: of these ops, the side named
# holds such a buffer (the numerics trace does not hash it; the NaN origin takes nothing in it
# for a value an op made)
PADDED_BUFFERS = {"fsdp::all_gather_copy_in": "output", "c10d::_allgather_base_": "both",
                  "fsdp::split_with_sizes_copy": "input"}


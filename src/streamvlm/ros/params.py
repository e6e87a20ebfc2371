"""Config dataclasses <-> ROS parameters: one ParameterDescriptor per field, from its metadata."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.node import Node
from rclpy.parameter import Parameter

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          tuple: ParameterType.PARAMETER_STRING_ARRAY}


def descriptor(name: str, default: Any, meta: Mapping[str, Any]) -> ParameterDescriptor:
    desc = ParameterDescriptor(name=name, type=_TYPES[type(default)], description=meta.get("help", ""),
                               read_only=bool(meta.get("read_only", False)))
    if "range" in meta:
        low, high = meta["range"]
        if isinstance(default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(low), to_value=float(high), step=0.0)]
        else:
            desc.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
    if "choices" in meta:
        desc.additional_constraints = "one of: " + ", ".join(meta["choices"])
    if desc.read_only:
        desc.additional_constraints = (desc.additional_constraints + "; " if desc.additional_constraints else "") + \
            "fixed while running (set it in the parameter file or with --ros-args -p)"
    return desc


def rename_legacy(node: Node, renamed: Mapping[str, str]) -> None:
    """Overrides given under old names (a parameter file from before a rename) are taken
    under their new names, with a warning; rclpy would otherwise ignore them silently."""
    overrides = getattr(node, "_parameter_overrides", {})
    for old, new in renamed.items():
        if old in overrides and new not in overrides:
            node.get_logger().warning(f"parameter {old} is now {new}; please rename it")
            overrides[new] = Parameter(new, value=overrides.pop(old).value)


def declare(node: Node, fields: Mapping[str, tuple[Any, Mapping[str, Any]]]) -> dict[str, Any]:
    """Declare every field as a parameter; returns the values in effect (defaults or overrides)."""
    values = {}
    for name, (default, meta) in fields.items():
        desc = descriptor(name, default, meta)
        if isinstance(default, tuple):  # a list of names; rclpy cannot type an empty list by its value
            param = node.declare_parameter(name, list(default) or Parameter.Type.STRING_ARRAY, desc)
            values[name] = tuple(param.value or ())
            continue
        try:
            param = node.declare_parameter(name, default, desc)
        except InvalidParameterTypeException:
            # `-p vision.fps:=2` arrives as an integer, and rclpy refuses it for a double
            # parameter. Take the number the user meant; anything else stays an error.
            override = getattr(node, "_parameter_overrides", {}).get(name)
            if not (isinstance(default, float) and override is not None
                    and override.type_ == Parameter.Type.INTEGER):
                raise
            param = node.declare_parameter(name, float(override.value), desc, ignore_override=True)
        values[name] = param.value
    return values


def on_change(node: Node, names: set[str], apply: Callable[[dict[str, Any]], None]) -> None:
    """Route run-time changes of `names` through `apply`, which raises ValueError to refuse
    them (nothing changes then, and the caller gets the reason)."""

    def callback(params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in names}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            apply(changes)
        except ValueError as err:
            return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(callback)


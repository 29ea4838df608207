"""Reading a packaged CloudFormation template: conditions under the parameter defaults (what a
plain `serverless deploy` gets), roles of functions, and IAM statements as (action, resource)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def parameter_defaults(template: dict[str, Any]) -> dict[str, str]:
    return {name: str(p.get("Default", "")) for name, p in template.get("Parameters", {}).items()}


Params = Mapping[str, str] | None  # parameter values given at deploy time, over the defaults


def _parameters(template: dict[str, Any], params: Params) -> dict[str, str]:
    return {**parameter_defaults(template), **(params or {})}


def _value(template: dict[str, Any], node: Any, params: Params = None) -> Any:
    if isinstance(node, dict) and "Ref" in node:
        return _parameters(template, params)[node["Ref"]]
    if isinstance(node, dict) and "Condition" in node:
        return condition(template, node["Condition"], params)
    if isinstance(node, dict):
        (fn, args), = node.items()
        if fn == "Fn::Equals":
            return str(_value(template, args[0], params)) == str(_value(template, args[1], params))
        if fn == "Fn::Not":
            return not _value(template, args[0], params)
        if fn == "Fn::And":
            return all(_value(template, a, params) for a in args)
        if fn == "Fn::Or":
            return any(_value(template, a, params) for a in args)
        raise AssertionError(f"unexpected function in a condition: {fn}")
    return node


def condition(template: dict[str, Any], name: str, params: Params = None) -> bool:
    """The value of one Condition when every parameter keeps its default (or takes ``params``)."""
    return bool(_value(template, template["Conditions"][name], params))


def exists(template: dict[str, Any], logical_id: str, params: Params = None) -> bool:
    """Whether CloudFormation would create the resource under the parameter defaults (or ``params``)."""
    resource = template["Resources"][logical_id]
    return "Condition" not in resource or condition(template, resource["Condition"], params)


def resolve(template: dict[str, Any], node: Any, params: Params = None) -> Any:
    """``node`` with each Fn::If decided and each Ref to a parameter replaced by its value
    (Refs to resources stay as they are)."""
    if isinstance(node, list):
        return [resolve(template, n, params) for n in node]
    if isinstance(node, dict) and "Fn::If" in node:
        name, when_true, when_false = node["Fn::If"]
        return resolve(template, when_true if condition(template, name, params) else when_false, params)
    if isinstance(node, dict) and "Ref" in node and node["Ref"] in template.get("Parameters", {}):
        return _parameters(template, params)[node["Ref"]]
    if isinstance(node, dict):
        return {k: resolve(template, v, params) for k, v in node.items()}
    return node


def role_of(template: dict[str, Any], function_logical_id: str) -> dict[str, Any]:
    role_ref = template["Resources"][function_logical_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    return dict(template["Resources"][role_ref])


def symbol(resource: Any) -> str:
    """A statement's resource as a short name: GetAtt X Arn -> X, Ref X -> X, the secret's Fn::If -> 'secret'."""
    if isinstance(resource, list):
        assert len(resource) == 1, resource
        return symbol(resource[0])
    if isinstance(resource, str):
        return resource
    if "Fn::GetAtt" in resource:
        return str(resource["Fn::GetAtt"][0])
    if "Ref" in resource:  # a state machine's or a topic's Ref is its ARN
        return str(resource["Ref"])
    if "Fn::If" in resource and resource["Fn::If"][0] == "CreateDatabaseSecret":
        return "secret"
    if "Fn::Sub" in resource:
        return str(resource["Fn::Sub"])
    if "Fn::Join" in resource:
        separator, parts = resource["Fn::Join"]
        return str(separator).join(f"${{{p['Ref']}}}" if isinstance(p, dict) and "Ref" in p else str(p)
                                   for p in parts)
    raise AssertionError(f"unexpected resource expression {resource}")


def grants(role: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (action, resource) pair the role's inline policies allow."""
    found: set[tuple[str, str]] = set()
    for policy in role["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            for action in actions:
                found.add((action, symbol(statement["Resource"])))
    return found

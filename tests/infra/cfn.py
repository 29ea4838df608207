"""Reading a packaged CloudFormation template: conditions under the parameter defaults (what a
plain `serverless deploy` gets), roles of functions, and IAM statements as (action, resource)."""

from __future__ import annotations

from typing import Any


def parameter_defaults(template: dict[str, Any]) -> dict[str, str]:
    return {name: str(p.get("Default", "")) for name, p in template.get("Parameters", {}).items()}


def _value(template: dict[str, Any], node: Any) -> Any:
    if isinstance(node, dict) and "Ref" in node:
        return parameter_defaults(template)[node["Ref"]]
    if isinstance(node, dict) and "Condition" in node:
        return condition(template, node["Condition"])
    if isinstance(node, dict):
        (fn, args), = node.items()
        if fn == "Fn::Equals":
            return str(_value(template, args[0])) == str(_value(template, args[1]))
        if fn == "Fn::Not":
            return not _value(template, args[0])
        if fn == "Fn::And":
            return all(_value(template, a) for a in args)
        if fn == "Fn::Or":
            return any(_value(template, a) for a in args)
        raise AssertionError(f"unexpected function in a condition: {fn}")
    return node


def condition(template: dict[str, Any], name: str) -> bool:
    """The value of one Condition when every parameter keeps its default."""
    return bool(_value(template, template["Conditions"][name]))


def exists(template: dict[str, Any], logical_id: str) -> bool:
    """Whether CloudFormation would create the resource under the parameter defaults."""
    resource = template["Resources"][logical_id]
    return "Condition" not in resource or condition(template, resource["Condition"])


def role_of(template: dict[str, Any], function_logical_id: str) -> dict[str, Any]:
    role_ref = template["Resources"][function_logical_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    return dict(template["Resources"][role_ref])


def symbol(resource: Any) -> str:
    """A statement's resource as a short name: GetAtt X Arn -> X, the secret's Fn::If -> 'secret'."""
    if isinstance(resource, list):
        assert len(resource) == 1, resource
        return symbol(resource[0])
    if isinstance(resource, str):
        return resource
    if "Fn::GetAtt" in resource:
        return str(resource["Fn::GetAtt"][0])
    if "Fn::If" in resource and resource["Fn::If"][0] == "CreateDatabaseSecret":
        return "secret"
    if "Fn::Sub" in resource:
        return str(resource["Fn::Sub"])
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

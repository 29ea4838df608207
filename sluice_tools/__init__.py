"""sluice's tooling: the operator CLI, the local stack, the demo and the chaos tooling.

Never shipped to Lambda. It may import ``sluice``; ``sluice`` never imports it.
"""

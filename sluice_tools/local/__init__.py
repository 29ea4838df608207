"""The local stack: every service sluice needs, on 127.0.0.1, started by `sluice local up`."""

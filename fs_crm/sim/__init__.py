"""Simulated outside systems (FreeSWITCH over real ESL sockets, retailCRM over real HTTP) for tests and the demo."""

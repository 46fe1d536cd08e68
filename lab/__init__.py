"""The lab: real peers (PostgreSQL, BIND 9, Pebble, OpenSSH, SMTP) on loopback, for the demo and the tests."""

"""The pieces of `dropwatch up` (tools/up.py): its child processes and their logs, the guards
that run before anything starts (one stack per folder, leftovers, taken ports), the health
checks that must pass before it says "ready", and the live view."""

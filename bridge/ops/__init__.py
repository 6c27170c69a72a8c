"""What an operator does and reads, shared by the `bridge` commands and the ops console.

`letters.py`: dead letters listed, shown, replayed and purged (one implementation behind both
`bridge dlq` and /ops/letters); `overview.py`: a shop's charts and delivery health;
`people.py`: a person's links, states and recent calls. The Redis side is store/ops.py.
"""

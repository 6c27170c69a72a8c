"""cartbridge: Shopify webhooks -> Customer.io Pipelines calls.

Data path: web (verify, enqueue) -> Redis inbound queue -> drain job (map: pure; identity and
cart state: Redis) -> outbox -> deliver job (Pipelines /v1/batch).
"""

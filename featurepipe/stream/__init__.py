"""Kafka -> Redis: ``worker`` (consumer loop) routes messages by ``plans``, validates them
(``validate``), dead-letters the invalid ones (``dead_letters``), commits states and offsets
through ``checkpoint``, retries outages (``retry``) and exposes ``metrics``."""

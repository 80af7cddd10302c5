"""The channels the gateway knows, registered explicitly, built from settings.

Adding a channel: its module in gateway/channels/, a builder here, its settings in config.py.
This module is outside channels/ because it reads the settings: adapters import no config.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.channels.base import Channel, ReceiptSink
from gateway.channels.email import EmailChannel
from gateway.channels.mqtt import MqttChannel
from gateway.channels.sms import HttpProvider, SmsChannel, StubProvider
from gateway.channels.webhook import WebhookChannel
from gateway.config import Settings
from gateway.endpoints import EndpointBook

Builder = Callable[[Settings, EndpointBook, ReceiptSink], Channel]


def _sms(settings: Settings, book: EndpointBook, receipts: ReceiptSink) -> Channel:
    s = settings.channels.sms
    if s.provider == "http" and s.url:
        token = settings.secrets.get("sms_token")
        return SmsChannel(
            HttpProvider(s.url, token=token, timeout=s.timeout_s, callback_url=s.callback_url)
        )
    return SmsChannel(StubProvider())


def _email(settings: Settings, book: EndpointBook, receipts: ReceiptSink) -> Channel:
    s = settings.channels.email
    return EmailChannel(
        s.url,
        sender=s.sender,
        username=s.username,
        password=settings.secrets.get("smtp_password"),
        starttls=s.starttls,
        use_tls=s.url.startswith("smtps://"),
        timeout=s.timeout_s,
        pool_size=s.pool_size,
    )


def _mqtt(settings: Settings, book: EndpointBook, receipts: ReceiptSink) -> Channel:
    s = settings.channels.mqtt
    devices = {
        device: e.id for e in book.by_id.values() if e.channel == "mqtt" for device in e.devices
    }
    # With several gateways (Redis set), each board ack is read by one of them.
    shared = SHARED_ACK_GROUP if settings.redis.url else None
    return MqttChannel(
        s.url,
        prefix=s.prefix,
        receipts=receipts,
        devices=devices,
        protocol=s.protocol,
        shared_acks=shared,
    )


def _webhook(settings: Settings, book: EndpointBook, receipts: ReceiptSink) -> Channel:
    return WebhookChannel(default_timeout=settings.channels.webhook.timeout_s)


SHARED_ACK_GROUP = "gateway"
"""`$share/gateway/{prefix}/ack/+` (design.md): the gateways of a deployment share the acks."""

CHANNELS: dict[str, Builder] = {
    "sms": _sms,
    "email": _email,
    "mqtt": _mqtt,
    "webhook": _webhook,
}


def build_channels(
    settings: Settings, book: EndpointBook, receipts: ReceiptSink
) -> dict[str, Channel]:
    """The enabled channels, not yet entered."""
    return {name: CHANNELS[name](settings, book, receipts) for name in settings.channels.enabled()}

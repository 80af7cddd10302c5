# The gateway as a container: slim Python 3.11, non-root, `gateway serve` on 0.0.0.0:8080.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_CONFIG=/app/config \
    GATEWAY_LISTEN=0.0.0.0:8080 \
    GATEWAY_STORE=sqlite:////data/gateway.db

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY config ./config
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /data --create-home gateway

USER gateway
VOLUME ["/data"]
EXPOSE 8080
# Tokens (GATEWAY_TOKEN_<CLIENT>) are passed at run time, never baked into the image.
CMD ["gateway", "serve"]

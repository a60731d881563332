#!/usr/bin/env bash
# Prints a .env for docker-compose with fresh random local secrets:
#   scripts/compose-env.sh > .env
# SECRETS_KEY is base64 of 32 random bytes; the DECK_* values are the gateway
# token Kong adds (X-Gateway-Token) and the example consumers' API keys. For
# local use only; real deployments take them from their secret store.
set -euo pipefail
key() { openssl rand -base64 "$1" | tr -d '\n=' | tr '+/' '-_'; }
echo "SECRETS_KEY=$(openssl rand -base64 32)"
echo "DECK_GATEWAY_TOKEN=$(key 32)"
echo "DECK_VIEWER_KEY=$(key 24)"
echo "DECK_OPERATOR_KEY=$(key 24)"
echo "DECK_ADMIN_KEY=$(key 24)"

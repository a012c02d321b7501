"""The `.env` keys a gateway's settings stand for (the API key is decided by the plan)."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hermes_infra.settings.schema import GatewaySettings, WeixinSettings

# Env keys whose values identify a messaging bot: two gateways sharing one fight over it.
BOT_TOKEN_KEY = re.compile(r"^[A-Z0-9_]*(TOKEN|WEBHOOK_SECRET|APP_SECRET)$|^[A-Z0-9_]+_ACCOUNT_ID$")


def managed_env(gateway: GatewaySettings) -> dict[str, str]:
    """Every `.env` key this profile manages, except the API key (decided on the host)."""
    values = {
        "API_SERVER_ENABLED": "true",
        "API_SERVER_HOST": "0.0.0.0",
        "API_SERVER_PORT": "8642",
        "API_SERVER_MODEL_NAME": gateway.api.model_name,
        "HERMES_SKIP_CONFIG_MIGRATION": "1",
    }
    if gateway.api.cors_origins:
        values["API_SERVER_CORS_ORIGINS"] = ",".join(gateway.api.cors_origins)
    if gateway.weixin is not None:
        values.update(weixin_env(gateway.weixin))
    for platform, users in gateway.allowed_users.items():
        values[f"{platform}_ALLOWED_USERS"] = ",".join(users)
    if gateway.dashboard.enabled:
        values.update({"HERMES_DASHBOARD": "1", "HERMES_DASHBOARD_HOST": "0.0.0.0",
                       "HERMES_DASHBOARD_PORT": "9119"})
        if gateway.dashboard.basic_auth_username:
            values["HERMES_DASHBOARD_BASIC_AUTH_USERNAME"] = gateway.dashboard.basic_auth_username
        if gateway.dashboard.basic_auth_password_hash is not None:
            values["HERMES_DASHBOARD_BASIC_AUTH_PASSWORD_HASH"] = (
                gateway.dashboard.basic_auth_password_hash.get_secret_value())
    values.update(gateway.config.model.env_values())
    values.update({key: secret.get_secret_value() for key, secret in gateway.env.items()})
    return values

def bot_tokens(gateway: GatewaySettings) -> dict[str, str]:
    """Env keys and values that identify a messaging bot (two gateways must never share one)."""
    return {key: value for key, value in managed_env(gateway).items() if BOT_TOKEN_KEY.match(key)}


def weixin_env(weixin: WeixinSettings) -> dict[str, str]:
    """The WEIXIN_* keys of one gateway's `.env`."""
    values = {"WEIXIN_DM_POLICY": weixin.dm_policy, "WEIXIN_GROUP_POLICY": weixin.group_policy}
    if weixin.token is not None:
        values["WEIXIN_TOKEN"] = weixin.token.get_secret_value()
    if weixin.account_id:
        values["WEIXIN_ACCOUNT_ID"] = weixin.account_id
    if weixin.allowed_users:
        values["WEIXIN_ALLOWED_USERS"] = ",".join(weixin.allowed_users)
    if weixin.allow_all_users:
        values["WEIXIN_ALLOW_ALL_USERS"] = "true"
    if weixin.home_channel:
        values["WEIXIN_HOME_CHANNEL"] = weixin.home_channel
    return values

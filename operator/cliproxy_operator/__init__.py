"""The cliproxy operator: renders ProviderCredential and ProviderRoute resources into proxy config.

It imports the config contract from :mod:`cliproxy_proxy.config` rather than redefining it.
"""

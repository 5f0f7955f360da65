"""The cliproxy operator: renders ProviderCredential and ProviderRoute resources into proxy config.

It imports what it shares with the proxy (config, catalog, token formats, the pure refresh) from one named
contract, :mod:`cliproxy_proxy.contract`, rather than redefining it or loading the proxy's serving modules.
"""

"""The HSM proxy: the only mobilesign process that loads the PKCS#11 module."""

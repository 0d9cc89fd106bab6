//! Pairing: the merchant's `POST /v1/magento/connect`, minting the 256-bit api_key and
//! the `setup/pair` handshake with the store (contract §4). Nothing here yet.

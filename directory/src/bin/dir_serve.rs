//! A standalone directory server (the crash tests run it as a child process; `haystack
//! directory` is the production entry): `dir_serve --listen ADDR [--metadata URL]
//! [--config FILE.json]`. Prints `listening on ADDR` once bound, stops on Ctrl-C.

use std::net::TcpListener;

use haystack_directory::DirectoryConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut metadata = None;
    let mut config = DirectoryConfig::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value()?,
            "--metadata" => metadata = Some(value()?),
            "--config" => {
                let text = std::fs::read_to_string(value()?)?;
                config = serde_json::from_str(&text)?;
            }
            other => {
                return Err(format!(
                    "unknown flag {other}; usage: dir_serve --listen ADDR [--metadata URL] [--config FILE]"
                )
                .into())
            }
        }
    }
    if let Some(m) = metadata {
        config.metadata = m;
    }
    config.validate()?;
    let listener = TcpListener::bind(&listen)?;
    println!("listening on {}", listener.local_addr()?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(haystack_directory::run(listener, config, async {
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    Ok(())
}

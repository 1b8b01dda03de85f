//! Email through one SMTP relay (lettre, async on tokio, rustls): a multipart
//! message with a plain-text and an HTML version.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::render::Message;
use super::retry::SendError;
use crate::config::notify::{EmailConfig, Security};

/// Where mail goes, for the log and the history: relay and recipients, no secret.
pub fn describe(config: &EmailConfig, to: &[Mailbox]) -> String {
    let to: Vec<String> = to.iter().map(|m| m.email.to_string()).collect();
    format!("{} via {}:{}", to.join(", "), config.server, config.port())
}

fn transport(
    config: &EmailConfig,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, SendError> {
    let relay = format!("{}:{}", config.server, config.port());
    let tls = || -> Result<TlsParameters, SendError> {
        let mut builder = TlsParameters::builder(config.server.clone());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                SendError::permanent(format!(
                    "cannot read notify.email.ca_file {}: {e}",
                    path.display()
                ))
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                SendError::permanent(format!(
                    "notify.email.ca_file {} is not a PEM certificate: {e}",
                    path.display()
                ))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        builder
            .build_rustls()
            .map_err(|e| SendError::permanent(format!("smtp {relay}: TLS setup: {e}")))
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.server)
        .port(config.port())
        .timeout(Some(timeout));
    builder = match config.security {
        Security::Tls => builder.tls(Tls::Wrapper(tls()?)),
        Security::Starttls => builder.tls(Tls::Required(tls()?)),
        Security::None => builder.tls(Tls::None),
    };
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.expose().to_string(),
        ));
    }
    Ok(builder.build())
}

/// One attempt: connect, send, quit.
pub async fn send(
    config: &EmailConfig,
    to: &[Mailbox],
    message: &Message,
    timeout: Duration,
) -> Result<(), SendError> {
    let mut email = lettre::Message::builder()
        .from(config.from.clone())
        .subject(message.subject.clone());
    for m in to {
        email = email.to(m.clone());
    }
    let email = email
        .multipart(MultiPart::alternative_plain_html(
            message.text.clone(),
            message.html.clone(),
        ))
        .map_err(|e| SendError::permanent(format!("cannot build the email: {e}")))?;
    let transport = transport(config, timeout)?;
    let relay = format!("{}:{}", config.server, config.port());
    match transport.send(email).await {
        Ok(_) => Ok(()),
        // 5xx: the relay refuses this message (recipient, sender, credentials);
        // sending it again changes nothing.
        Err(e) if e.is_permanent() => Err(SendError::permanent(format!("smtp {relay}: {e}"))),
        Err(e) if e.is_timeout() => Err(SendError::retry(format!(
            "smtp {relay}: no answer within {}s",
            timeout.as_secs_f64()
        ))),
        Err(e) => Err(SendError::retry(format!("smtp {relay}: {e}"))),
    }
}

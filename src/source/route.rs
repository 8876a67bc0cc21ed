//! Where a non-alert envelope goes (`source.channels`, `durable_channels`, interim
//! transcripts) and the topic below the prefix it goes to. Pure: no I/O.

use serde_json::Value;

use crate::alert::{sanitize_topic_level, Envelope};
use crate::config::SourceConfig;

/// What happens to a non-alert envelope, by `source.channels` / `durable_channels`.
#[derive(Debug, PartialEq, Eq)]
pub enum ChannelRoute {
    NotRelayed,
    InterimDropped,
    Durable,
    BestEffort,
}

/// Pure routing decision for one envelope.
pub fn route(cfg: &SourceConfig, env: &Envelope) -> ChannelRoute {
    if !cfg.channels.contains(&env.channel) {
        return ChannelRoute::NotRelayed;
    }
    if env.channel == "transcript"
        && !cfg.transcript_interim
        && env.data.get("is_final") == Some(&Value::Bool(false))
    {
        return ChannelRoute::InterimDropped;
    }
    if cfg.durable_channels.contains(&env.channel) {
        ChannelRoute::Durable
    } else {
        ChannelRoute::BestEffort
    }
}

/// `{channel}/{rtstream_id or _}`, both sanitised as topic levels.
pub fn channel_topic_suffix(env: &Envelope) -> String {
    format!(
        "{}/{}",
        sanitize_topic_level(&env.channel),
        sanitize_topic_level(env.rtstream_id.as_deref().unwrap_or("_"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{parse_frame, Frame};
    use crate::config::Config;

    fn envelope(text: &str) -> Envelope {
        match parse_frame(text) {
            Ok(Frame::Envelope(e)) => e,
            other => panic!("expected an envelope, got {other:?}"),
        }
    }

    #[test]
    fn channels_route_by_config_and_interim_transcripts_are_dropped() {
        let cfg = Config::parse(
            "[source]\nurl = \"ws://x/\"\nchannels = [\"transcript\", \"visual_index\"]\ndurable_channels = [\"scene_index\"]\n",
        )
        .expect("config")
        .source;
        let r = |t: &str| route(&cfg, &envelope(t));
        assert_eq!(
            r(r#"{"channel":"transcript","data":{"text":"hi","is_final":true}}"#),
            ChannelRoute::BestEffort
        );
        assert_eq!(
            r(r#"{"channel":"transcript","data":{"text":"h","is_final":false}}"#),
            ChannelRoute::InterimDropped
        );
        assert_eq!(
            r(r#"{"type":"visual_index","rtstream_id":"rt1","data":{}}"#),
            ChannelRoute::Durable
        );
        assert_eq!(
            r(r#"{"channel":"audio_index","data":{}}"#),
            ChannelRoute::NotRelayed
        );
        assert_eq!(
            channel_topic_suffix(&envelope(
                r#"{"channel":"scene_index","rtstream_id":"a/b","data":{}}"#
            )),
            "scene_index/a_b"
        );
        assert_eq!(
            channel_topic_suffix(&envelope(r#"{"channel":"transcript","data":{}}"#)),
            "transcript/_"
        );
    }
}

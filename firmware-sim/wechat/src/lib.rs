//! WeChat Pay simulator (in progress).

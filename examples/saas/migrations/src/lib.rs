//! SaaS example migrations

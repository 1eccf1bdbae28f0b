-- The app database `dreamseed`: the service's business tables (contract: lab/README.md).
-- Created by lab.seed_app.create_app_schema; every statement is idempotent (IF NOT EXISTS).
-- Timestamps are timestamptz (stored UTC); "local day" in queries means Asia/Seoul.
-- No foreign keys on purpose: simulators append rows (feedback, sessions) independently and
-- the plan's SQL only reads; indexes serve the day-bucketed range scans the plan runs.

CREATE TABLE IF NOT EXISTS users (
    id                  bigserial PRIMARY KEY,
    created_at          timestamptz NOT NULL DEFAULT now(),
    country             text,
    acquisition_channel text
);
CREATE INDEX IF NOT EXISTS users_created_at_idx ON users (created_at);
COMMENT ON TABLE users IS 'Registered users; count(created_at < t) = registered users at t';

CREATE TABLE IF NOT EXISTS daily_active_users (
    day          date PRIMARY KEY,
    active_users int NOT NULL CHECK (active_users >= 0)
);
COMMENT ON TABLE daily_active_users IS
    'Roll-up: distinct active users per Asia/Seoul local day (today: so far)';

CREATE TABLE IF NOT EXISTS user_sessions (
    id         bigserial PRIMARY KEY,
    user_id    bigint,
    started_at timestamptz DEFAULT now(),
    duration_s int CHECK (duration_s IS NULL OR duration_s >= 0)
);
CREATE INDEX IF NOT EXISTS user_sessions_started_at_idx ON user_sessions (started_at);
CREATE INDEX IF NOT EXISTS user_sessions_user_id_idx ON user_sessions (user_id);
COMMENT ON TABLE user_sessions IS 'App sessions; distinct user_id per local day = DAU';

CREATE TABLE IF NOT EXISTS subscriptions (
    id                bigserial PRIMARY KEY,
    user_id           bigint,
    plan              text,
    monthly_price_usd numeric(10,2) CHECK (monthly_price_usd IS NULL OR monthly_price_usd >= 0),
    started_at        timestamptz NOT NULL DEFAULT now(),
    canceled_at       timestamptz NULL,
    CONSTRAINT subscriptions_cancel_after_start
        CHECK (canceled_at IS NULL OR canceled_at >= started_at)
);
CREATE INDEX IF NOT EXISTS subscriptions_started_at_idx ON subscriptions (started_at);
CREATE INDEX IF NOT EXISTS subscriptions_canceled_at_idx ON subscriptions (canceled_at)
    WHERE canceled_at IS NOT NULL;
COMMENT ON TABLE subscriptions IS 'Paid plans (basic $9.99, pro $19.99); active = not canceled';

CREATE TABLE IF NOT EXISTS payments (
    id              bigserial PRIMARY KEY,
    user_id         bigint,
    subscription_id bigint,
    paid_at         timestamptz DEFAULT now(),
    amount_usd      numeric(10,2) CHECK (amount_usd IS NULL OR amount_usd >= 0),
    status          text CHECK (status IN ('succeeded', 'failed', 'refunded'))
);
CREATE INDEX IF NOT EXISTS payments_paid_at_idx ON payments (paid_at);
COMMENT ON TABLE payments IS 'Monthly charges; revenue = sum(amount_usd) of succeeded payments';

CREATE TABLE IF NOT EXISTS infra_costs (
    month      date,
    component  text,
    amount_usd numeric(10,2) CHECK (amount_usd IS NULL OR amount_usd >= 0),
    CONSTRAINT infra_costs_month_first_day CHECK (extract(day FROM month) = 1),
    CONSTRAINT infra_costs_month_component_key UNIQUE (month, component)
);
COMMENT ON TABLE infra_costs IS 'Infrastructure cost per UTC month (first day) and component';

CREATE TABLE IF NOT EXISTS marketing_spend (
    day        date,
    channel    text,
    amount_usd numeric(10,2) CHECK (amount_usd IS NULL OR amount_usd >= 0),
    CONSTRAINT marketing_spend_day_channel_key UNIQUE (day, channel)
);
COMMENT ON TABLE marketing_spend IS 'Paid acquisition spend per local day and channel (CAC)';

CREATE TABLE IF NOT EXISTS nps_responses (
    id          bigserial PRIMARY KEY,
    user_id     bigint,
    answered_at timestamptz DEFAULT now(),
    score       int CHECK (score BETWEEN 0 AND 10)
);
CREATE INDEX IF NOT EXISTS nps_responses_answered_at_idx ON nps_responses (answered_at);
COMMENT ON TABLE nps_responses IS 'NPS answers 0..10: promoters 9-10, detractors 0-6';

CREATE TABLE IF NOT EXISTS feedback (
    id         bigserial PRIMARY KEY,
    user_id    bigint,
    created_at timestamptz DEFAULT now(),
    category   text CHECK (category IN ('slow', 'connection_failure', 'ai_wait', 'bug',
                                        'content', 'praise', 'other')),
    message    text
);
CREATE INDEX IF NOT EXISTS feedback_created_at_idx ON feedback (created_at);
CREATE INDEX IF NOT EXISTS feedback_category_created_at_idx ON feedback (category, created_at);
COMMENT ON TABLE feedback IS 'In-app feedback; complaints cluster at peak time 19:00-23:00 KST';

CREATE TABLE IF NOT EXISTS enterprise_inquiries (
    id         bigserial PRIMARY KEY,
    created_at timestamptz DEFAULT now(),
    company    text,
    seats      int CHECK (seats IS NULL OR seats > 0)
);
CREATE INDEX IF NOT EXISTS enterprise_inquiries_created_at_idx
    ON enterprise_inquiries (created_at);
COMMENT ON TABLE enterprise_inquiries IS 'Inbound enterprise (academy / school) inquiries';

CREATE TABLE IF NOT EXISTS questions (
    id      bigserial PRIMARY KEY,
    subject text,
    body    text,
    answer  text
);
CREATE INDEX IF NOT EXISTS questions_subject_idx ON questions (subject);
COMMENT ON TABLE questions IS 'Practice questions served by the API (GET /v1/questions)';

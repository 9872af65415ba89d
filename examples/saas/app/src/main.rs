fn main() { mtnt::run!(saas_migrations) }

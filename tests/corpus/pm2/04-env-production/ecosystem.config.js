module.exports = {
  apps : [{
    name   : "api",
    script : "./src/index.js",
    env: {
      NODE_ENV: "development",
      DB_HOST: "localhost"
    },
    env_production: {
      NODE_ENV: "production",
      DB_HOST: "db.internal"
    }
  }]
}

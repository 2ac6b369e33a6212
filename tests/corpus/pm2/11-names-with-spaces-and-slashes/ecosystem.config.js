module.exports = {
  apps: [
    { name: "My APP", script: "app.js" },
    { name: "api/development", script: "app.js", env: { NODE_ENV: "development" } },
  ],
};

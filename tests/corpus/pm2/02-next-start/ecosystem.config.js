module.exports = {
  apps: [
    {
      name: "my-next-app",
      script: "node_modules/next/dist/bin/next",
      args: "start -p 3000",
      exec_mode: "cluster",
      instances: 2,
      autorestart: true,
      env: { NODE_ENV: "production" },
    },
  ],
};

module.exports = {
  apps: [{
    name: 'camel',
    script: 'server.js',
    execMode: 'cluster',
    instances: 2,
    maxMemoryRestart: '200M',
    killTimeout: 5000,
    waitReady: true,
    listenTimeout: 8000,
  }],
};
